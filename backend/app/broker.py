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
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    RetentionPolicy,
    StreamConfig,
    StreamInfo,
)
from nats.js.errors import (
    APIError,
    NoStreamResponseError,
    NotFoundError,
    ServiceUnavailableError,
)
from taskiq import AckableMessage, AsyncBroker, BrokerMessage, InMemoryBroker
from taskiq.abc.broker import AsyncBroker as _AsyncBroker
from taskiq.context import Context
from taskiq.kicker import AsyncKicker
from taskiq.message import TaskiqMessage
from taskiq.middlewares import SmartRetryMiddleware
from taskiq_nats import PullBasedJetStreamBroker

from app.core.config import Settings, get_settings
from app.core.endpoints import nats_servers
from app.core.errors import ConfigurationError, EmbeddingProviderError

logger = logging.getLogger(__name__)


DELIVERY_LABEL = "_delivery"
# Stream settings this module owns; the others keep what the server chose.
_STREAM_FIELDS = ("subjects", "retention", "max_age", "max_bytes", "discard", "num_replicas")
# A task's retry after a provider error is also the probe that sees the provider back: its wait
# is capped so a returning provider is noticed within seconds (the service's own retries, with
# full jitter and Retry-After, already spread the load of a fleet of workers).
RETRY_MAX_DELAY = 5.0
RETENTION_FIXED = 10052  # JetStream: "stream configuration update can not change retention"
# A JetStream cluster elects a new stream leader within seconds of losing one; a publish waits
# that long (retrying) before it gives the rows back to the sweeper.
PUBLISH_RETRY_SECONDS = 30.0
RECONNECT_GRACE_SECONDS = 2.0
ACK_RETRY_SECONDS = 30.0
PUBLISH_RETRYABLE = (
    NatsTimeoutError,
    NoRespondersError,
    NoStreamResponseError,
    ServiceUnavailableError,
)


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
        """Acknowledge, and wait for the server to confirm: an ack lost while the cluster
        elects a new consumer leader would bring the task back after ack_wait."""
        if self.settled:
            return
        self.settled = True
        deadline = time.monotonic() + ACK_RETRY_SECONDS
        while True:
            try:
                await self.msg.ack_sync(timeout=2.0)
                return
            except (NatsTimeoutError, NoRespondersError) as exc:
                if time.monotonic() > deadline:
                    logger.warning(
                        "the ack of stream message %s was not confirmed (%s); it comes back "
                        "after ack_wait and its task finds its rows done",
                        self.msg.metadata.sequence.stream,
                        type(exc).__name__,
                    )
                    return
            await asyncio.sleep(0.5)

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
        callbacks = {
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
        }
        await self.client.connect(
            nats_servers(self.settings), **{**callbacks, **self.connection_kwargs}
        )
        self.js = self.client.jetstream()
        if self.stream_config.name is None:
            self.stream_config.name = self.stream_name
        if not self.stream_config.subjects:
            self.stream_config.subjects = [self.subject]
        await _while_electing(self._add_or_reuse_stream, self._connected)
        if self.is_worker_process:
            await _while_electing(self._startup_consumer, self._connected)

    async def _on_error(self, exc: Exception) -> None:
        logger.debug("NATS connection error: %s: %s", type(exc).__name__, exc)

    async def _on_disconnected(self) -> None:
        if not self.client.is_closed:
            logger.warning("NATS connection lost; reconnecting (to any server of NATS_URL)")

    async def _on_reconnected(self) -> None:
        server = self.client.connected_url
        logger.warning(
            "NATS reconnected to %s", server.netloc.rsplit("@", 1)[-1] if server else "?"
        )

    async def _add_or_reuse_stream(self) -> None:
        """Create the stream, or bring an existing one to this configuration."""
        try:
            await self._apply_stream_config()
        except APIError as exc:
            replicas = self.stream_config.num_replicas or 1
            if replicas == 1 or exc.err_code == RETENTION_FIXED:
                raise
            raise ConfigurationError(
                f"JetStream refused a stream of {replicas} replicas ({exc.description}). Fix: "
                f"point NATS_URL at a JetStream cluster of at least {replicas} nodes, or set "
                "NATS_STREAM_REPLICAS=1 for a single server."
            ) from None

    async def _apply_stream_config(self) -> None:
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
            logger.info("stream %s updated to the configured limits and replicas", wanted.name)
        except APIError as exc:
            if exc.err_code != RETENTION_FIXED:
                raise
            await self._replace_stream(info)

    async def kick(self, message: BrokerMessage) -> None:
        """Publish a task; while the cluster has no stream leader (a node was lost) or the
        connection moves to another server, retry for PUBLISH_RETRY_SECONDS. The task id and its
        retry count are the message id, so a publish repeated after it did land is dropped by
        JetStream, and a task's retry is not."""
        # A retry keeps its task id (taskiq's retry middleware) and counts up `_retries`.
        msg_id = f"{message.task_id}.{message.labels.get('_retries', 0)}"
        headers = {**{k: str(v) for k, v in message.labels.items()}, "Nats-Msg-Id": msg_id}
        await _while_electing(
            lambda: self.js.publish(self.subject, payload=message.message, headers=headers),
            self._connected,
        )

    def _connected(self) -> bool:
        return bool(self.client.is_connected)

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
            kept.max_age, kept.max_bytes, kept.discard, kept.num_replicas = (
                wanted.max_age,
                wanted.max_bytes,
                wanted.discard,
                wanted.num_replicas,
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


async def _while_electing(
    call: Callable[[], Awaitable[Any]], connected: Callable[[], bool]
) -> None:
    """Run a JetStream request; while no server answers it (a node was lost, the cluster
    elects a leader, the client moves to another server), retry for PUBLISH_RETRY_SECONDS.
    With no server reachable at all (NATS down) it gives up as before: the client gets
    RECONNECT_GRACE_SECONDS to reconnect, and the rows are left to the sweeper."""
    deadline = time.monotonic() + PUBLISH_RETRY_SECONDS
    delay = 0.25
    while True:
        try:
            await call()
            return
        except PUBLISH_RETRYABLE as exc:
            if time.monotonic() + delay > deadline or not await _reconnects(connected):
                raise
            logger.info("JetStream did not answer (%s); retrying", type(exc).__name__)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


async def _reconnects(connected: Callable[[], bool]) -> bool:
    """Whether the client is connected, or connects again within RECONNECT_GRACE_SECONDS."""
    deadline = time.monotonic() + RECONNECT_GRACE_SECONDS
    while not connected():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


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


def kicker(task: Any, via: AsyncBroker) -> AsyncKicker[Any, Any]:
    """Kick `task` (registered on the worker's broker) through `via`, an app's own client; the
    task's labels (retry_on_error among them) travel with the message."""
    return AsyncKicker(task_name=task.task_name, broker=via, labels=dict(task.labels))


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


def connection_errors(every: float = 30.0) -> Callable[[Exception], Awaitable[None]]:
    """nats-py's error callback: one line with the reason, not its default traceback per
    reconnect attempt; while NATS stays down, one line every `every` seconds."""
    last = [-float("inf")]

    async def on_error(exc: Exception) -> None:  # nats-py wants a coroutine function
        now = time.monotonic()
        loud = now - last[0] >= every
        if loud:
            last[0] = now
        level = logging.WARNING if loud else logging.DEBUG
        logger.log(level, "NATS connection error (%s: %s); reconnecting", type(exc).__name__, exc)

    return on_error


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
        num_replicas=settings.nats_stream_replicas,
    )


def build_broker(settings: Settings | None = None) -> AsyncBroker:
    """The broker for `settings`: JetStream (stream, subject and durable named after NATS_STREAM)."""
    settings = settings or get_settings()
    retry = ProviderRetryMiddleware(
        default_retry_count=5,
        default_delay=2.0,
        max_delay_exponent=min(RETRY_MAX_DELAY, settings.nats_ack_wait_seconds / 2),
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
        error_cb=connection_errors(),
    )
    jetstream.settings = settings
    return jetstream.with_middlewares(retry)


broker = build_broker()
