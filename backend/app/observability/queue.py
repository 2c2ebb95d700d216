"""The JetStream consumer as an operator sees it: pending, ack-pending, redelivered, pulls."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from app.core.config import Settings
from app.observability.heartbeat import WorkerSeen, workers_seen

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueueState:
    stream: str
    consumer: str
    pending: int  # in the stream, not delivered to the consumer yet
    ack_pending: int  # delivered to a worker, not acknowledged
    redelivered: int  # delivered more than once, not acknowledged
    waiting_pulls: int  # fetches waiting for messages: the idle workers
    stream_messages: int
    workers: list[WorkerSeen] | None  # by their heartbeats; None: the bucket was unreadable


async def queue_state(broker: Any, settings: Settings) -> QueueState | None:
    """The consumer's counts from JetStream (`consumer_info`); None without a connected broker."""
    js = getattr(broker, "js", None)
    stream, durable = getattr(broker, "stream_name", None), getattr(broker, "durable", None)
    if js is None or not stream or not durable:
        return None
    try:
        info = await js.consumer_info(stream, durable)
        stream_info = await js.stream_info(stream)
    except Exception as exc:  # noqa: BLE001 - NATS down or no consumer yet: shown, not raised
        logger.debug("consumer info unavailable: %s", exc)
        return None
    return QueueState(
        stream=stream,
        consumer=durable,
        pending=int(info.num_pending or 0),
        ack_pending=int(info.num_ack_pending or 0),
        redelivered=int(info.num_redelivered or 0),
        waiting_pulls=int(info.num_waiting or 0),
        stream_messages=int(stream_info.state.messages or 0),
        workers=await workers_seen(js, settings),
    )
