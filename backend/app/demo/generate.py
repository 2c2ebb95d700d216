"""More messages of the same kind as the demo chat, for bigger runs (`demo --scale N`, benchmarks).

Deterministic for a seed; English and Ukrainian; error codes and ticket ids; varied enough that
texts are nearly all distinct at 100k.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

CHANNELS = ("backend", "frontend", "devops", "product", "support")
AUTHORS = (
    "olena.k",
    "taras.m",
    "iryna.s",
    "max.b",
    "dmytro.p",
    "oleh.r",
    "sofia.l",
    "andrii.v",
    "kate.w",
    "nadia.h",
)
SERVICES = (
    "payments-worker",
    "auth-service",
    "reports API",
    "the editor",
    "search",
    "the importer",
    "billing",
    "notifications",
)
CODES = (
    "ERR_PAYMENT_4021",
    "ERR_AUTH_401",
    "E1107",
    "PG-53300",
    "HTTP 502",
    "HTTP 413",
    "ERR_SEARCH_PAGE",
    "E2290",
)
EN = (
    "Bug: {svc} fails with {code} for some users since the last deploy ({ticket}).",
    "Fixed the {code} in {svc}: the retry reused stale state. PR #{pr}.",
    "Hotfix for {svc} is deployed, {code} rate back to zero. Closing {ticket}.",
    "We decided to move {svc} behind a feature flag before the full rollout.",
    "Question: why does {svc} time out only on Mondays? Seeing {code} in the logs.",
    "Blocked on {ticket}: waiting for access to the {svc} production logs.",
    "Risk: {svc} runs a single replica, one crash and {code} for everyone.",
    "Idea: cache the {svc} responses for 60 seconds, most requests repeat.",
    "Requirement from the customer: {svc} must keep an audit log for 90 days.",
    "Turns out {svc} was never idempotent, a redelivery sent {code} twice.",
)
UK = (
    "Баг: {svc} падає з {code} після останнього релізу ({ticket}).",
    "Виправив {code} у {svc}, проблема була в кеші. PR #{pr}.",
    "Вирішили перенести {svc} за фіче-флаг перед повним релізом.",
    "Питання: чому {svc} відповідає з {code} тільки вночі?",
    "Заблоковано {ticket}: чекаємо доступ до логів {svc}.",
    "Ризик: у {svc} одна репліка, падіння означає {code} для всіх.",
    "Ідея: кешувати відповіді {svc} на хвилину.",
)


def generate_messages(
    n: int, *, seed: int = 0, start: datetime | None = None
) -> Iterator[dict[str, object]]:
    """`n` messages in the demo format, external ids gen-000001..., none extracted yet."""
    rng = random.Random(seed)
    when = start or datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
    for i in range(1, n + 1):
        template = rng.choice(UK) if rng.random() < 0.3 else rng.choice(EN)
        content = template.format(
            svc=rng.choice(SERVICES),
            code=rng.choice(CODES),
            ticket=f"TT-{rng.randint(1000, 9999)}",
            pr=rng.randint(100, 9999),
        )
        when += timedelta(seconds=rng.randint(5, 600))
        yield {
            "external_id": f"gen-{seed:02d}-{i:06d}",
            "author": rng.choice(AUTHORS),
            "channel": rng.choice(CHANNELS),
            "sent_at": when.isoformat(),
            "content": f"{content} [{i}]",
            "extracted": False,
        }
