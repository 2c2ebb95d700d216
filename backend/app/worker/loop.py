"""The worker process: consumes the JetStream queue and runs the sweeper, stops gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from functools import partial

from taskiq.receiver import Receiver

from app.broker import JetStreamBroker, broker
from app.core.config import Settings
from app.core.metrics import SWEEPER_QUEUED
from app.db import check_database, is_transient_db_error, session_factory
from app.embedding import provider_service
from app.embedding import runtime as runtime_module
from app.embedding import tasks as embedding_tasks  # noqa: F401 - registers the tasks
from app.embedding.entities import ATOMS, MESSAGES
from app.embedding.queue import sweep
from app.embedding.recovery import BROKER, DATABASE, Recovery
from app.knowledge import tasks as knowledge_tasks  # noqa: F401 - registers the tasks
from app.observability.heartbeat import heartbeat_loop
from app.observability.server import start_worker_metrics
from app.observability.tasks import TaskMetricsMiddleware
from app.worker import task_logs
from app.worker.task_logs import reason

logger = logging.getLogger(__name__)


async def preflight(settings: Settings) -> None:
    """Refuse to start on an unreachable database or a provider that does not fit the column."""
    runtime = runtime_module.runtime
    await check_database(runtime.engine)
    async with session_factory(runtime.engine)() as session:
        spec = await provider_service.resolve_spec(session, None, settings)
        await provider_service.check_fits_column(session, spec)


# While the database is down, the sweeper tries it this often (a returning one is seen at once).
PROBE_SECONDS = 2.0


async def sweep_once(settings: Settings, *, grace_seconds: float) -> dict[str, int]:
    """One pass of the sweeper over messages and atoms; counted in /metrics."""
    counts = await sweep(
        runtime_module.runtime.engine,
        embedding_tasks.enqueuer(None),
        (MESSAGES, ATOMS),
        grace_seconds=grace_seconds,
        requeue_after_seconds=settings.sweeper_requeue_seconds,
        batch_size=settings.task_batch_size,
        max_attempts=settings.embedding_max_attempts,
    )
    if any(counts.values()):
        logger.info("sweeper queued %s", counts)
        for entity_name, queued in counts.items():
            SWEEPER_QUEUED.labels(entity_name).inc(queued)
    return counts


async def sweeper_loop(settings: Settings, stop: asyncio.Event, wake: asyncio.Event) -> None:
    """Every interval, queue rows that waited past the grace period (the self-healing path);
    woken when a dependency is back or rows were handed back, take every row that waits, young
    ones too."""
    recovery = runtime_module.runtime.recovery
    while not stop.is_set():
        woken = wake.is_set()
        wake.clear()
        try:
            await sweep_once(
                settings, grace_seconds=0.0 if woken else settings.sweeper_grace_seconds
            )
            recovery.back(DATABASE)
        except Exception as exc:  # noqa: BLE001 - a failed sweep is tried again
            _sweep_failed(exc, recovery)
        pause = PROBE_SECONDS if DATABASE in recovery.down else settings.sweeper_interval_seconds
        await _first(stop, wake, pause)


def _sweep_failed(exc: Exception, recovery: Recovery) -> None:
    """One line per outage (the probes that follow are quiet), one per other failure."""
    if not is_transient_db_error(exc):
        logger.warning("sweep failed (%s); trying again next interval", reason(exc))
        return
    if DATABASE not in recovery.down:
        logger.warning("sweep failed, database unreachable (%s); probing it", reason(exc))
    recovery.failed(DATABASE)


async def _first(stop: asyncio.Event, wake: asyncio.Event, timeout: float) -> None:
    """Until `stop` or `wake` is set, or `timeout` passes."""
    waits = [asyncio.create_task(stop.wait()), asyncio.create_task(wake.wait())]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()


def watch_connection(target: JetStreamBroker, recovery: Recovery) -> None:
    """Tell `recovery` when the NATS connection drops and when it is back."""

    async def disconnected() -> None:
        recovery.failed(BROKER)

    async def reconnected() -> None:
        recovery.back(BROKER)

    target.connection_kwargs.update(disconnected_cb=disconnected, reconnected_cb=reconnected)


async def run_worker(settings: Settings, *, sweeper: bool = True) -> None:
    """Run until SIGINT/SIGTERM, then finish in-flight tasks and close everything."""
    runtime = runtime_module.runtime
    await preflight(settings)
    broker.is_worker_process = True
    broker.add_middlewares(TaskMetricsMiddleware())
    task_logs.install()
    if isinstance(broker, JetStreamBroker):
        watch_connection(broker, runtime.recovery)
    metrics_server = start_worker_metrics(settings)
    await broker.startup()
    if isinstance(broker, JetStreamBroker):
        await broker.watch_exhausted(partial(embedding_tasks.park_exhausted, broker))
    stop, wake = asyncio.Event(), asyncio.Event()
    runtime.stopping, runtime.recovery.wake = stop, wake
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    receiver = Receiver(
        broker,
        max_async_tasks=settings.worker_max_async_tasks,
        max_prefetch=0,
        run_startup=False,
        # in-flight tasks get this long; the rest are cut (their leases expire, JetStream
        # delivers their messages again)
        wait_tasks_timeout=settings.worker_stop_seconds,
    )
    background = [asyncio.create_task(receiver.listen(stop))]
    if sweeper:
        background.append(asyncio.create_task(sweeper_loop(settings, stop, wake)))
    js = getattr(broker, "js", None)  # JetStream only: the workers-seen heartbeat
    if js is not None:
        background.append(asyncio.create_task(heartbeat_loop(js, settings, stop)))
    logger.info("worker ready (max %d tasks in flight)", settings.worker_max_async_tasks)
    try:
        await until_stopped(background, stop, settings.worker_stop_seconds)
    finally:
        # bounded: a server that vanished must not hold the exit (each close gives up)
        for closing in (broker.shutdown(), runtime.aclose()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(closing, settings.worker_stop_seconds)
        if metrics_server is not None:
            metrics_server.shutdown()
        logger.info("worker stopped")


async def until_stopped(
    background: list[asyncio.Task[None]], stop: asyncio.Event, grace: float
) -> None:
    """Run until `stop` (or one of `background` ends); then give them `grace` seconds to end
    and cancel what is left. A task that failed re-raises its error."""
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([*background, stopping], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    # the receiver itself waits `grace` for in-flight tasks: a little more for it
    _, left = await asyncio.wait(background, timeout=grace + 5.0)
    for task in left:
        task.cancel()
    results = await asyncio.gather(*background, stopping, return_exceptions=True)
    if left:
        logger.warning("%d loops did not stop in time; cut", len(left))
    for result in results:
        if isinstance(result, Exception):
            raise result
