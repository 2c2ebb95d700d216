"""Workers seen: each worker keeps a key in a JetStream key-value bucket fresh; keys expire.

JetStream's consumer info counts pull requests, not workers (a busy worker has none waiting),
so each worker writes `<host>-<pid>` into the bucket `<NATS_STREAM>-workers` every
HEARTBEAT_SECONDS; the bucket's TTL drops the key of a worker that stopped writing, and a
worker that stops gracefully purges its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.core.config import Settings

logger = logging.getLogger(__name__)
HEARTBEAT_SECONDS = 10.0
TTL_SECONDS = 3 * HEARTBEAT_SECONDS


def bucket_name(settings: Settings) -> str:
    return f"{settings.nats_stream}-workers"


def worker_key() -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:60]
    return f"{host}-{os.getpid()}"


@dataclass(frozen=True)
class WorkerSeen:
    key: str
    host: str
    pid: int
    started_at: str
    seen_at: str
    max_tasks: int


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


async def heartbeat_loop(js: Any, settings: Settings, stop: asyncio.Event) -> None:
    """Write this worker's key until `stop`, then purge it."""
    key, started, kv = worker_key(), _now(), None
    beat = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": started}
    beat["max_tasks"] = settings.worker_max_async_tasks
    try:
        while not stop.is_set():
            try:
                if kv is None:
                    kv = await _bucket(js, settings)
                await kv.put(key, json.dumps({**beat, "seen_at": _now()}).encode())
            except Exception as exc:  # noqa: BLE001 - NATS away: the next beat tries again
                logger.debug("heartbeat not written: %s", exc)
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HEARTBEAT_SECONDS)
    finally:
        if kv is not None:
            with suppress(Exception):
                await kv.purge(key)


async def _bucket(js: Any, settings: Settings) -> Any:
    """The workers bucket, created with the stream's replicas (an existing one is kept)."""
    from nats.js.errors import BadRequestError

    try:
        return await js.create_key_value(
            bucket=bucket_name(settings),
            ttl=TTL_SECONDS,
            history=1,
            replicas=settings.nats_stream_replicas,
        )
    except BadRequestError:  # it exists with other settings (replicas changed): use it
        return await js.key_value(bucket_name(settings))


async def workers_seen(js: Any, settings: Settings) -> list[WorkerSeen] | None:
    """The workers whose key is fresh; None when the bucket cannot be read."""
    from nats.js.errors import BucketNotFoundError, NoKeysError

    try:
        kv = await js.key_value(bucket_name(settings))
        keys = await kv.keys()
    except (BucketNotFoundError, NoKeysError):
        return []
    except Exception as exc:  # noqa: BLE001 - shown as unknown, not raised
        logger.debug("workers not read: %s", exc)
        return None
    seen = []
    for key in keys:
        with suppress(Exception):
            entry = await kv.get(key)
            data = json.loads(entry.value or b"{}")
            seen.append(
                WorkerSeen(
                    key=key,
                    host=str(data.get("host", "?")),
                    pid=int(data.get("pid", 0)),
                    started_at=str(data.get("started_at", "")),
                    seen_at=str(data.get("seen_at", "")),
                    max_tasks=int(data.get("max_tasks", 0)),
                )
            )
    return sorted(seen, key=lambda w: w.key)
