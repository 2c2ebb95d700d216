"""Backfill: walk rows without a current embedding in keyset pages and queue (or embed) them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.embedding.entities import Entity
from app.embedding.queue import (
    Enqueue,
    PendingFilter,
    count_pending,
    mark_queued,
    pending_pages,
)

# (entity, rows handled in this page) -> None
OnPage = Callable[[Entity, int], None]
EmbedPage = Callable[[Entity, list[uuid.UUID]], Awaitable[object]]


@dataclass
class BackfillPlan:
    entities: Sequence[Entity]
    page_size: int = 500
    limit: int | None = None
    model: str | None = None  # set with --stale: rows by another model count as work
    retry_failed: bool = False
    max_attempts: int = 3

    def pending(self) -> PendingFilter:
        return PendingFilter(
            model=self.model, include_parked=self.retry_failed, max_attempts=self.max_attempts
        )


@dataclass
class BackfillReport:
    found: dict[str, int] = field(default_factory=dict)
    handled: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return sum(self.handled.values()) / self.seconds if self.seconds else 0.0


async def plan_counts(engine: AsyncEngine, plan: BackfillPlan) -> dict[str, int]:
    """How many rows each entity would hand over (the --dry-run answer)."""
    counts: dict[str, int] = {}
    for entity in plan.entities:
        total = await count_pending(engine, entity, plan.pending())
        counts[entity.name] = total if plan.limit is None else min(total, plan.limit)
    return counts


async def _reset_attempts(engine: AsyncEngine, entity: Entity, ids: list[uuid.UUID]) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f"UPDATE {entity.table} SET embedding_attempts = 0 WHERE id = ANY(:ids) AND embedding_attempts > 0"
            ),
            {"ids": ids},
        )


async def run_backfill(
    engine: AsyncEngine,
    plan: BackfillPlan,
    *,
    enqueue: Enqueue | None = None,
    embed_page: EmbedPage | None = None,
    on_page: OnPage | None = None,
) -> BackfillReport:
    """Hand every page of ids to `enqueue` (publish) or `embed_page` (--inline).

    Pages are keyset-paginated by id and never all in memory. A publish failure stops the run
    with the error; what was published stays published and a rerun continues from the rows
    still pending.
    """
    assert (enqueue is None) != (embed_page is None), "exactly one of enqueue / embed_page"
    report = BackfillReport(found=await plan_counts(engine, plan))
    started = time.perf_counter()
    for entity in plan.entities:
        handled = 0
        async for ids in pending_pages(
            engine, entity, plan.pending(), page_size=plan.page_size, limit=plan.limit
        ):
            if plan.retry_failed:
                await _reset_attempts(engine, entity, ids)
            if enqueue is not None:
                await mark_queued(
                    engine, entity, ids
                )  # before publishing: no lock race with workers
                await enqueue(entity, ids)
            else:
                assert embed_page is not None
                await embed_page(entity, ids)
            handled += len(ids)
            if on_page is not None:
                on_page(entity, len(ids))
        report.handled[entity.name] = handled
    report.seconds = time.perf_counter() - started
    return report


async def wait_for_coverage(
    engine: AsyncEngine,
    plan: BackfillPlan,
    *,
    poll_seconds: float = 1.0,
    stall_seconds: float = 30.0,
    on_poll: Callable[[dict[str, int]], None] | None = None,
) -> dict[str, int]:
    """Poll the pending counts until they reach zero or stop moving; return what is left."""
    last_total, last_change = None, time.monotonic()
    while True:
        left: dict[str, int] = {
            e.name: await count_pending(
                engine, e, PendingFilter(model=plan.model, max_attempts=plan.max_attempts)
            )
            for e in plan.entities
        }
        if on_poll is not None:
            on_poll(left)
        total = sum(left.values())
        if total == 0:
            return left
        if total != last_total:
            last_total, last_change = total, time.monotonic()
        elif time.monotonic() - last_change > stall_seconds:
            return left
        await asyncio.sleep(poll_seconds)
