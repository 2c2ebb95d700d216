"""Set the gauges about the data and the queue, when /metrics is read (never in the background:
a deployment nobody scrapes pays nothing)."""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession

from app.api.state import AppState
from app.core import metrics as m
from app.core.errors import AppError
from app.embedding import status as status_service
from app.embedding.registry import EmbeddingRegistry
from app.observability.queue import queue_state

logger = logging.getLogger(__name__)


async def refresh(state: AppState, registry: EmbeddingRegistry) -> None:
    """Rows, embedded, pending, stale, parked and the oldest pending row per entity; the queue."""
    try:
        await _refresh_rows(state, registry)
    except Exception as exc:  # noqa: BLE001 - a scrape reports what it can
        logger.warning("metrics: reading the row counts failed (%s)", type(exc).__name__)
        m.SCRAPE_ERRORS.labels("database").inc()
    await _refresh_queue(state)


async def _refresh_rows(state: AppState, registry: EmbeddingRegistry) -> None:
    max_attempts = state.settings.embedding_max_attempts
    async with state.sessions() as session:
        model = await _provider_model(registry, session)
        rows = await status_service.coverage(session, model=model, max_attempts=max_attempts)
        progress = await status_service.progress(session, max_attempts=max_attempts)
    for row in rows:
        m.ROWS.labels(row.entity).set(row.total)
        m.ROWS_EMBEDDED.labels(row.entity).set(row.embedded)
        m.ROWS_PENDING.labels(row.entity).set(row.pending)
        m.ROWS_STALE.labels(row.entity).set(row.stale)
        m.ROWS_PARKED.labels(row.entity).set(row.parked)
    m.ROWS_EMBEDDED_BY_MODEL.clear()  # a model no longer in use must disappear
    for item in progress:
        m.OLDEST_PENDING_AGE.labels(item.entity).set(item.oldest_pending_seconds)
        for model_name, count in item.embedded_by_model.items():
            m.ROWS_EMBEDDED_BY_MODEL.labels(item.entity, model_name).set(count)


async def _provider_model(registry: EmbeddingRegistry, session: AsyncSession) -> str | None:
    try:
        entry = await registry.get(session)
    except AppError:
        return None
    return entry.spec.model


async def _refresh_queue(state: AppState) -> None:
    stream = state.settings.nats_stream
    labels = (stream, f"{stream}-worker")
    queue = await queue_state(state.broker, state.settings) if state.broker_ready else None
    if queue is None:
        m.JETSTREAM_UP.labels(*labels).set(0)
        m.SCRAPE_ERRORS.labels("jetstream").inc()
        return
    m.JETSTREAM_UP.labels(*labels).set(1)
    m.JETSTREAM_PENDING.labels(*labels).set(queue.pending)
    m.JETSTREAM_ACK_PENDING.labels(*labels).set(queue.ack_pending)
    m.JETSTREAM_REDELIVERED.labels(*labels).set(queue.redelivered)
    m.JETSTREAM_WAITING_PULLS.labels(*labels).set(queue.waiting_pulls)
    if queue.workers is not None:
        m.WORKERS_SEEN.labels(stream).set(len(queue.workers))
