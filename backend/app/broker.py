"""The taskiq broker on NATS JetStream, and its retry policy.

Acknowledgement (taskiq's default, WHEN_SAVED): a message is acked after its task ran and its
result was handled, failed or not. A failed task that is retryable is published again by the
retry middleware before the ack. A worker killed mid-task never acks, so JetStream delivers the
message again after `ack_wait` (renewed while a task works). Together: at-least-once; the tasks
are idempotent.

The stream is a work queue: an acked task is removed, and what waits is bounded by age and
bytes. The consumer delivers a message at most `max_deliver` times; a task may settle its own
message (`Delivery`: nak with a delay for a later redelivery, or ack) and knows which delivery
it runs in. A changed configuration is applied to an existing stream and consumer at startup.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    RetentionPolicy,
    StreamConfig,
    StreamInfo,
)
from nats.js.errors import APIError, NotFoundError
from taskiq import AckableMessage, AsyncBroker, InMemoryBroker
from taskiq.abc.broker import AsyncBroker as _AsyncBroker
from taskiq.context import Context
from taskiq.kicker import AsyncKicker
from taskiq.message import TaskiqMessage
from taskiq.middlewares import SmartRetryMiddleware
from taskiq_nats import PullBasedJetStreamBroker

from app.core.config import Settings, get_settings
from app.core.endpoints import ensure_nats_url
from app.core.errors import EmbeddingProviderError

logger = logging.getLogger(__name__)


DELIVERY_LABEL = "_delivery"
# Stream settings this module owns; the others keep what the server chose.
_STREAM_FIELDS = ("subjects", "retention", "max_age", "max_bytes", "discard")
RETENTION_FIXED = 10052  # JetStream: "stream configuration update can not change retention"


@dataclass
class Delivery:
    """One delivery of a JetStream message, which the task running it may settle itself."""

    msg: Msg
    max_deliver: int
    settled: bool = False

    @property
    def number(self) -> int:
        """1 for the first delivery, 2 for the first redelivery, ..."""
        return int(self.msg.metadata.num_delivered)

    @property
    def last(self) -> bool:
        return self.number >= self.max_deliver

    async def ack(self) -> None:
        if not self.settled:
            self.settled = True
            await self.msg.ack()

    async def nak(self, delay: float) -> None:
        """Deliver again after `delay` seconds (counts towards max_deliver)."""
        if not self.settled:
            self.settled = True
            await self.msg.nak(delay=delay)

    async def in_progress(self) -> None:
        """Reset the ack timer: the task is still working."""
        if not self.settled:
            await self.msg.in_progress()


class JetStreamBroker(PullBasedJetStreamBroker):
    """Resolves the NATS URL at startup (configured or embedded); only workers consume."""

    settings: Settings | None = None  # set by build_broker; None: the process settings
    deliveries: dict[str, Delivery]

    async def startup(self) -> None:
        await _AsyncBroker.startup(self)
        self.deliveries = {}
        await self.client.connect(ensure_nats_url(self.settings), **self.connection_kwargs)
        self.js = self.client.jetstream()
        if self.stream_config.name is None:
            self.stream_config.name = self.stream_name
        if not self.stream_config.subjects:
            self.stream_config.subjects = [self.subject]
        await self._add_or_reuse_stream()
        if self.is_worker_process:
            await self._startup_consumer()

    async def _add_or_reuse_stream(self) -> None:
        """Create the stream, or bring an existing one to this configuration."""
        wanted = self.stream_config
        try:
            info = await self.js.stream_info(str(wanted.name))
        except NotFoundError:
            await self.js.add_stream(config=wanted)
            return
        if all(getattr(info.config, f) == getattr(wanted, f) for f in _STREAM_FIELDS):
            return
        try:
            await self.js.update_stream(config=wanted)
            logger.info("stream %s updated to the configured limits", wanted.name)
        except APIError as exc:
            if exc.err_code != RETENTION_FIXED:
                raise
            await self._replace_stream(info)

    async def _replace_stream(self, info: StreamInfo) -> None:
        """The retention cannot change in place: recreate the stream if no task waits in it."""
        wanted = self.stream_config
        # Only a worker recreates it (and its consumer right after); a publisher leaves it.
        waiting = await self._tasks_waiting(info) if self.is_worker_process else None
        if waiting is None or waiting:
            logger.warning(
                "stream %s keeps its %s retention for now (%s); it becomes a work queue when "
                "a worker starts with no task waiting in it. Its limits are applied.",
                wanted.name,
                info.config.retention,
                "not a worker" if waiting is None else f"{waiting} tasks wait in it",
            )
            kept = StreamConfig.from_response(info.config.as_dict())
            kept.max_age, kept.max_bytes, kept.discard = (
                wanted.max_age,
                wanted.max_bytes,
                wanted.discard,
            )
            await self.js.update_stream(config=kept)
            return
        await self.js.delete_stream(str(wanted.name))
        await self.js.add_stream(config=wanted)
        logger.info("stream %s recreated as a work queue", wanted.name)

    async def _tasks_waiting(self, info: StreamInfo) -> int:
        if not info.state.messages:
            return 0
        try:
            consumer = await self.js.consumer_info(str(self.stream_config.name), self.durable)
        except NotFoundError:
            return int(info.state.messages)  # no worker ever read them: all wait
        return int(consumer.num_pending) + int(consumer.num_ack_pending)

    async def watch_exhausted(self, handle: Callable[[bytes, int], Awaitable[None]]) -> None:
        """Call `handle(task data, deliveries)` for each message the consumer gave up on (no ack
        after max_deliver deliveries), then delete it from the stream. One worker per event."""
        stream = str(self.stream_config.name)
        subject = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{self.durable}"

        async def on_advisory(msg: Msg) -> None:
            try:
                event = json.loads(msg.data)
                seq = int(event["stream_seq"])
                raw = await self.js.get_msg(stream, seq)
                await handle(raw.data or b"", int(event.get("deliveries", 0)))
                await self.js.delete_msg(stream, seq)
            except Exception as exc:  # noqa: BLE001 - max_age removes it in the end
                logger.warning("could not park an exhausted task (%s: %s)", type(exc).__name__, exc)

        await self.client.subscribe(subject, queue=f"{stream}-exhausted", cb=on_advisory)

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:
        """Fetch forever; a broken connection is waited out, not fatal."""
        while True:
            try:
                messages = await self.consumer.fetch(
                    batch=self.pull_consume_batch, timeout=self.pull_consume_timeout
                )
            except NatsTimeoutError:
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - nats-py reconnects underneath
                logger.warning("fetching from NATS failed (%s); retrying", exc)
                await asyncio.sleep(1.0)
                await self._resubscribe()
                continue
            for msg in messages:
                yield self._ackable(msg)

    async def _resubscribe(self) -> None:
        """Create the consumer again if it went (its stream was recreated by another worker)."""
        if not self.client.is_connected:
            return
        try:
            await self.js.consumer_info(str(self.stream_config.name), self.durable)
        except NotFoundError:
            with contextlib.suppress(Exception):
                await self._startup_consumer()
        except Exception:  # noqa: BLE001, S110 - the next fetch tells
            pass

    def _ackable(self, msg: Msg) -> AckableMessage:
        """The message for taskiq, labelled with a key to its Delivery (see current_delivery)."""
        key = f"{msg.metadata.sequence.stream}.{msg.metadata.num_delivered}"
        config = self.consumer_config
        delivery = Delivery(msg, (config.max_deliver if config else None) or 1)
        data = msg.data
        try:
            body = json.loads(data)
            body.setdefault("labels", {})[DELIVERY_LABEL] = key
            data = json.dumps(body).encode()
        except (ValueError, AttributeError, TypeError):
            pass  # not a task message: taskiq reports and acks it
        self.deliveries[key] = delivery

        async def ack() -> None:
            self.deliveries.pop(key, None)
            await delivery.ack()

        return AckableMessage(data=data, ack=ack)


def current_delivery(context: Context) -> Delivery | None:
    """The JetStream delivery a task runs in (None on other brokers)."""
    key = context.message.labels.get(DELIVERY_LABEL)
    deliveries = getattr(context.broker, "deliveries", None)
    if key is None or deliveries is None:
        return None
    found: Delivery | None = deliveries.get(str(key))
    return found


GiveUp = Callable[[TaskiqMessage], Awaitable[None]]


class ProviderRetryMiddleware(SmartRetryMiddleware):
    """Retry tasks that failed on a provider error, after a backoff spent in this worker.

    The NATS broker has no delayed delivery, so the delay is slept here before publishing the
    retry: while a provider is down, a worker's slots fill with waiting retries and it stops
    hammering the provider. Delays stay well under ack_wait. When the retries are spent, or the
    retry cannot be published (NATS down), `on_give_up` hands the task's rows back to the
    sweeper, which takes them on its next pass.
    """

    on_give_up: dict[str, GiveUp] = {}  # noqa: RUF012 - task name -> hook, set by the tasks

    async def on_send(
        self, kicker: AsyncKicker[Any, Any], message: TaskiqMessage, delay: float
    ) -> None:
        await asyncio.sleep(delay)
        try:
            await kicker.kiq(*message.args, **message.kwargs)
        except Exception as exc:  # noqa: BLE001 - the rows are the queue: hand them back
            logger.warning("could not publish a retry of %s (%s)", message.task_name, exc)
            await self._give_up(message)

    async def on_error(self, message: TaskiqMessage, result: Any, exception: BaseException) -> None:
        await super().on_error(message, result, exception)
        retries = int(message.labels.get("_retries", 0)) + 1
        max_retries = int(message.labels.get("max_retries", self.default_retry_count))
        if isinstance(exception, EmbeddingProviderError) and retries >= max_retries:
            await self._give_up(message)

    async def _give_up(self, message: TaskiqMessage) -> None:
        hook = self.on_give_up.get(message.task_name)
        if hook is None:
            return
        try:
            await hook(message)
        except Exception as exc:  # noqa: BLE001 - the lease expires; the sweeper heals it then
            logger.warning("could not hand %s back (%s)", message.task_name, exc)

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


def stream_config(settings: Settings) -> StreamConfig:
    """A work queue (acked tasks removed), bounded by age and bytes; a full one refuses tasks
    (their publisher leaves the rows to the sweeper)."""
    return StreamConfig(
        name=settings.nats_stream,
        subjects=[f"{settings.nats_stream}.tasks"],
        retention=RetentionPolicy.WORK_QUEUE,
        max_age=settings.nats_stream_max_age_seconds,
        max_bytes=settings.nats_stream_max_bytes,
        discard=DiscardPolicy.NEW,
    )


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
        max_deliver=settings.nats_max_deliver,
        max_ack_pending=1000,
    )
    jetstream = JetStreamBroker(
        servers=[],  # resolved in startup()
        subject=subject,
        stream_name=stream,
        durable=durable,
        stream_config=stream_config(settings),
        consumer_config=consumer,
        pull_consume_batch=1,
        pull_consume_timeout=5.0,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
    )
    jetstream.settings = settings
    return jetstream.with_middlewares(retry)


broker = build_broker()
