"""The worker process: consumes the JetStream queue and runs the sweeper, stops gracefully."""

from __future__ import annotations

import asyncio
import logging
import signal
from functools import partial

from taskiq.receiver import Receiver

from app.broker import JetStreamBroker, broker
from app.core.config import Settings
from app.core.metrics import SWEEPER_QUEUED
from app.db import check_database, session_factory
from app.embedding import provider_service
from app.embedding import runtime as runtime_module
from app.embedding import tasks as embedding_tasks  # noqa: F401 - registers the tasks
from app.embedding.entities import ATOMS, MESSAGES
from app.embedding.queue import sweep
from app.knowledge import tasks as knowledge_tasks  # noqa: F401 - registers the tasks
from app.observability.heartbeat import heartbeat_loop
from app.observability.server import start_worker_metrics
from app.observability.tasks import TaskMetricsMiddleware

logger = logging.getLogger(__name__)


async def preflight(settings: Settings) -> None:
    """Refuse to start on an unreachable database or a provider that does not fit the column."""
    runtime = runtime_module.runtime
    await check_database(runtime.engine)
    async with session_factory(runtime.engine)() as session:
        spec = await provider_service.resolve_spec(session, None, settings)
        await provider_service.check_fits_column(session, spec)


async def sweeper_loop(settings: Settings, stop: asyncio.Event) -> None:
    """Every interval, queue rows that waited past the grace period (the self-healing path)."""
    runtime = runtime_module.runtime
    while not stop.is_set():
        try:
            counts = await sweep(
                runtime.engine,
                embedding_tasks.enqueuer(None),
                (MESSAGES, ATOMS),
                grace_seconds=settings.sweeper_grace_seconds,
                requeue_after_seconds=settings.sweeper_requeue_seconds,
                batch_size=settings.task_batch_size,
                max_attempts=settings.embedding_max_attempts,
            )
            if any(counts.values()):
                logger.info("sweeper queued %s", counts)
                for entity_name, queued in counts.items():
                    SWEEPER_QUEUED.labels(entity_name).inc(queued)
        except Exception:  # noqa: BLE001 - a failed sweep is retried next interval
            logger.exception("sweep failed; retrying in %.0fs", settings.sweeper_interval_seconds)
        try:
            await asyncio.wait_for(stop.wait(), settings.sweeper_interval_seconds)
        except TimeoutError:
            pass


async def run_worker(settings: Settings, *, sweeper: bool = True) -> None:
    """Run until SIGINT/SIGTERM, then finish in-flight tasks and close everything."""
    runtime = runtime_module.runtime
    await preflight(settings)
    broker.is_worker_process = True
    broker.add_middlewares(TaskMetricsMiddleware())
    metrics_server = start_worker_metrics(settings)
    await broker.startup()
    if isinstance(broker, JetStreamBroker):
        await broker.watch_exhausted(partial(embedding_tasks.park_exhausted, broker))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    receiver = Receiver(
        broker, max_async_tasks=settings.worker_max_async_tasks, max_prefetch=0, run_startup=False
    )
    background = [asyncio.create_task(receiver.listen(stop))]
    if sweeper:
        background.append(asyncio.create_task(sweeper_loop(settings, stop)))
    js = getattr(broker, "js", None)  # JetStream only: the workers-seen heartbeat
    if js is not None:
        background.append(asyncio.create_task(heartbeat_loop(js, settings, stop)))
    logger.info("worker ready (max %d tasks in flight)", settings.worker_max_async_tasks)
    try:
        await asyncio.gather(*background)
    finally:
        await broker.shutdown()
        await runtime.aclose()
        if metrics_server is not None:
            metrics_server.shutdown()
        logger.info("worker stopped")
