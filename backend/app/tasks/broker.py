"""The taskiq broker on NATS JetStream, and its retry policy.

Acknowledgement (taskiq's default, WHEN_SAVED): a message is acked after its task ran and its
result was handled, failed or not. A failed task that is retryable is published again by the
retry middleware before the ack. A worker killed mid-task never acks, so JetStream delivers the
message again after `ack_wait`. Together: at-least-once; the tasks are idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig
from taskiq import AckableMessage, AsyncBroker, InMemoryBroker
from taskiq.abc.broker import AsyncBroker as _AsyncBroker
from taskiq.kicker import AsyncKicker
from taskiq.message import TaskiqMessage
from taskiq.middlewares import SmartRetryMiddleware
from taskiq_nats import PullBasedJetStreamBroker

from app.core.config import Settings, get_settings
from app.core.errors import EmbeddingProviderError

logger = logging.getLogger(__name__)


class JetStreamBroker(PullBasedJetStreamBroker):
    """Resolves the NATS URL at startup (configured or embedded); only workers consume."""

    settings: Settings | None = None  # set by build_broker; None: the process settings

    async def startup(self) -> None:
        from app.core.endpoints import nats_url

        await _AsyncBroker.startup(self)
        await self.client.connect(nats_url(self.settings), **self.connection_kwargs)
        self.js = self.client.jetstream()
        if self.stream_config.name is None:
            self.stream_config.name = self.stream_name
        if not self.stream_config.subjects:
            self.stream_config.subjects = [self.subject]
        await self._add_or_reuse_stream()
        if self.is_worker_process:
            await self._startup_consumer()

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        """Fetch forever; a broken connection is waited out, not fatal."""
        while True:
            try:
                async for message in super().listen():
                    yield message
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - nats-py reconnects underneath
                logger.warning("fetching from NATS failed (%s); retrying", exc)
                await asyncio.sleep(1.0)


class ProviderRetryMiddleware(SmartRetryMiddleware):
    """Retry tasks that failed on a provider error, after a backoff spent in this worker.

    The NATS broker has no delayed delivery, so the delay is slept here before publishing the
    retry: while a provider is down, a worker's slots fill with waiting retries and it stops
    hammering the provider. Delays stay well under ack_wait.
    """

    async def on_send(
        self, kicker: AsyncKicker[Any, Any], message: TaskiqMessage, delay: float
    ) -> None:
        await asyncio.sleep(delay)
        await kicker.kiq(*message.args, **message.kwargs)

    def make_delay(self, message: TaskiqMessage, retries: int) -> float:
        base = float(message.labels.get("delay", self.default_delay))
        return float(
            min(base * 2 ** (retries - 1), self.max_delay_exponent) * (0.5 + random.random() / 2)
        )


async def worker_seen(target: AsyncBroker | None = None) -> bool:
    """Whether a worker is pulling from the durable consumer right now."""
    target = target or broker
    js = getattr(target, "js", None)
    if js is None:
        return isinstance(target, InMemoryBroker)
    try:
        info = await js.consumer_info(target.stream_name, target.durable)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - no consumer yet means no worker ever started
        return False
    return bool(info.num_waiting)


def build_broker(settings: Settings | None = None) -> AsyncBroker:
    """The broker for `settings`: JetStream (stream, subject and durable named after NATS_STREAM)."""
    settings = settings or get_settings()
    retry = ProviderRetryMiddleware(
        default_retry_count=5,
        default_delay=2.0,
        max_delay_exponent=min(60.0, settings.nats_ack_wait_seconds / 2),
        types_of_exceptions=(EmbeddingProviderError,),
    )
    if settings.task_broker == "memory":
        return InMemoryBroker(await_inplace=True).with_middlewares(retry)
    stream, subject, durable = (
        settings.nats_stream,
        f"{settings.nats_stream}.tasks",
        f"{settings.nats_stream}-worker",
    )
    consumer = ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.nats_ack_wait_seconds,
        max_ack_pending=1000,
    )
    jetstream = JetStreamBroker(
        servers=[],  # resolved in startup()
        subject=subject,
        stream_name=stream,
        durable=durable,
        stream_config=StreamConfig(name=stream, subjects=[subject]),
        consumer_config=consumer,
        pull_consume_batch=1,
        pull_consume_timeout=5.0,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
    )
    jetstream.settings = settings
    return jetstream.with_middlewares(retry)


broker = build_broker()
