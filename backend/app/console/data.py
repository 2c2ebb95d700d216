"""What the console's overview shows, read in one pass: coverage and progress per entity,
the HNSW indexes, the JetStream consumer, and the rows that failed."""

from __future__ import annotations

from dataclasses import dataclass

from app.api.state import AppState
from app.core.errors import AppError
from app.embedding import status as status_service
from app.embedding.entities import ENTITIES
from app.embedding.parked import FailedRow, failed_rows
from app.embedding.registry import EmbeddingRegistry
from app.indexes.status import IndexReport, index_reports
from app.observability.queue import QueueState, queue_state


@dataclass(frozen=True)
class CoverageView:
    coverage: status_service.EntityCoverage
    progress: status_service.EntityProgress

    @property
    def switching(self) -> bool:
        """More than one embedding model in the table: a model switch is under way."""
        return len(self.progress.embedded_by_model) > 1

    @property
    def eta_seconds(self) -> float | None:
        """Pending rows at the last minute's rate; None when nothing was embedded lately."""
        rate = self.progress.rows_per_second
        return self.coverage.pending / rate if rate > 0 else None


@dataclass(frozen=True)
class Overview:
    provider: str | None
    provider_error: str | None
    model: str | None
    entities: list[CoverageView]
    indexes: list[IndexReport]
    queue: QueueState | None
    failed: list[FailedRow]
    max_attempts: int

    @property
    def parked(self) -> int:
        return sum(view.coverage.parked for view in self.entities)


async def overview(state: AppState, registry: EmbeddingRegistry) -> Overview:
    """Everything on the overview page, read now."""
    max_attempts = state.settings.embedding_max_attempts
    provider = model = provider_error = None
    async with state.sessions() as session:
        try:
            entry = await registry.get(session)
            provider, model = entry.spec.name, entry.spec.model
        except AppError as exc:
            provider_error = exc.message
        rows = await status_service.coverage(session, model=model, max_attempts=max_attempts)
        progress = await status_service.progress(session, max_attempts=max_attempts)
        await session.commit()
    async with state.engine.connect() as conn:
        indexes = await index_reports(conn)
    failed = [
        row
        for entity in ENTITIES.values()
        for row in await failed_rows(state.engine, entity, max_attempts=max_attempts)
    ]
    return Overview(
        provider=provider,
        provider_error=provider_error,
        model=model,
        entities=[CoverageView(c, p) for c, p in zip(rows, progress, strict=True)],
        indexes=indexes,
        queue=await _queue(state),
        failed=failed,
        max_attempts=max_attempts,
    )


async def _queue(state: AppState) -> QueueState | None:
    return await queue_state(state.broker, state.settings) if state.broker_ready else None
