"""Embedding coverage and vector index health: the table the team used to diagnose the outage."""

from __future__ import annotations

from dataclasses import asdict

from pydantic import Field, computed_field
from pydantic.dataclasses import dataclass
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.sizes import format_size, human
from app.embedding.entities import ENTITIES, NEEDS_TEXT
from app.indexes.status import expected_indexes

_TABLES = [(name, entity.table) for name, entity in ENTITIES.items()]


@dataclass(frozen=True)
class EntityCoverage:
    """One entity's rows by embedding state; also the status route's response item."""

    entity: str
    total: int
    embedded: int
    current: int
    stale: int
    pending: int
    parked: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def coverage_pct(self) -> float:
        return round(100.0 * self.embedded / self.total, 1) if self.total else 100.0

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "coverage_pct": self.coverage_pct}


@dataclass(frozen=True)
class IndexState:
    """An HNSW index as the catalog shows it; also the status route's response item."""

    name: str
    table: str
    exists: bool
    valid: bool
    ready: bool
    matches: bool
    definition: str | None = Field(default=None, exclude=True)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def healthy(self) -> bool:
        return self.exists and self.valid and self.ready and self.matches


def _coverage_sql(table: str) -> str:
    current = "embedding_content_hash = content_hash AND embedding IS NOT NULL"
    model_ok = "(CAST(:model AS text) IS NULL OR embedding_model = :model)"
    return f"""
        SELECT count(*),
               count(*) FILTER (WHERE embedding IS NOT NULL),
               count(*) FILTER (WHERE {current} AND {model_ok}),
               count(*) FILTER (WHERE embedding IS NOT NULL AND NOT ({current} AND {model_ok})),
               count(*) FILTER (WHERE NOT coalesce({current} AND {model_ok}, false)
                                AND embedding_attempts < :max_attempts),
               count(*) FILTER (WHERE NOT coalesce({current} AND {model_ok}, false)
                                AND embedding_attempts >= :max_attempts)
        FROM {table}
    """


async def coverage(
    session: AsyncSession, *, model: str | None = None, max_attempts: int = 3
) -> list[EntityCoverage]:
    """Rows, embedded rows, current/stale/pending/parked counts per entity."""
    result = []
    for entity, table in _TABLES:
        row = (
            await session.execute(
                text(_coverage_sql(table)), {"model": model, "max_attempts": max_attempts}
            )
        ).one()
        result.append(EntityCoverage(entity, *(int(value) for value in row)))
    return result


@dataclass(frozen=True)
class ParkedReason:
    entity: str
    reason: str
    rows: int


async def parked_reasons(
    session: AsyncSession, *, max_attempts: int = 3, limit: int = 5
) -> list[ParkedReason]:
    """The most common reasons rows are parked, per entity (retried only on request)."""
    found: list[ParkedReason] = []
    for entity, table in _TABLES:
        rows = await session.execute(
            text(
                f"SELECT coalesce(embedding_error, 'unknown'), count(*) FROM {table} "
                "WHERE embedding_attempts >= :max_attempts "
                f"AND {NEEDS_TEXT} "
                "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT :limit"
            ),
            {"max_attempts": max_attempts, "limit": limit},
        )
        found.extend(ParkedReason(entity, str(reason), int(count)) for reason, count in rows)
    return found


async def index_states(session: AsyncSession) -> list[IndexState]:
    """Whether each expected HNSW index exists, is valid and ready, and has the right definition."""
    states = []
    for index in await expected_indexes(await session.connection()):
        row = (await session.execute(text(index.state_sql))).first()
        if row is None:
            states.append(IndexState(index.name, index.table, False, False, False, False, None))
        else:
            valid, ready, matches, definition = row
            states.append(
                IndexState(index.name, index.table, True, valid, ready, bool(matches), definition)
            )
    return states


MEMORY_SQL = """
SELECT pg_size_bytes(current_setting('shared_buffers')),
       (SELECT coalesce(sum(pg_relation_size(c.oid)), 0)
          FROM pg_class c JOIN pg_am a ON a.oid = c.relam
         WHERE c.relkind = 'i' AND a.amname = 'hnsw')
"""


@dataclass(frozen=True)
class ServerMemory:
    """shared_buffers beside the HNSW indexes it should hold.

    An index larger than shared_buffers is read in from the OS cache page by page as searches
    walk it: at 1M x 384 the bare query took 5.3 ms with 128MB against 2.0 ms with 6GB.
    """

    shared_buffers_bytes: int
    hnsw_index_bytes: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def indexes_fit(self) -> bool:
        return self.hnsw_index_bytes <= self.shared_buffers_bytes

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "indexes_fit": self.indexes_fit}

    def describe(self) -> str:
        """One line for the operator; the fix when the indexes do not fit."""
        head = (
            f"shared_buffers {human(self.shared_buffers_bytes)}, "
            f"HNSW indexes {human(self.hnsw_index_bytes)}"
        )
        if self.indexes_fit:
            return f"{head}: the indexes fit in shared_buffers"
        return (
            f"{head}: the indexes do not fit, so searches copy their pages in from the OS cache "
            f"(about 2.7x slower measured at 1M rows). Fix: raise shared_buffers above "
            f"{format_size(self.hnsw_index_bytes)} (EMBEDDED_POSTGRES_SHARED_BUFFERS for the "
            "embedded server; it applies at the next start)"
        )


async def server_memory(session: AsyncSession) -> ServerMemory:
    """The server's shared_buffers and the size of its HNSW indexes."""
    buffers, indexes = (await session.execute(text(MEMORY_SQL))).one()
    return ServerMemory(int(buffers), int(indexes))


@dataclass(frozen=True)
class EntityProgress:
    """What the console and /metrics add to coverage: models in use, recent rate, oldest wait."""

    entity: str
    embedded_by_model: dict[str, int]
    embedded_last_minute: int
    oldest_pending_seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.embedded_last_minute / 60.0


def _models_sql(table: str) -> str:
    return f"""
        SELECT coalesce(embedding_model, '?') AS model, count(*) AS rows,
               count(*) FILTER (WHERE embedded_at > now() - interval '60 seconds') AS recent
        FROM {table} WHERE embedding IS NOT NULL GROUP BY 1
    """


def _oldest_pending_sql(table: str) -> str:
    # Through the partial index on exactly the pending predicate.
    return f"""
        SELECT coalesce(extract(epoch FROM now() - min(updated_at)), 0) FROM {table}
        WHERE {NEEDS_TEXT}
          AND embedding_attempts < :max_attempts
    """


async def progress(session: AsyncSession, *, max_attempts: int = 3) -> list[EntityProgress]:
    """Per entity: embedded rows per model, rows embedded in the last minute, oldest pending."""
    result = []
    for entity, table in _TABLES:
        models = (await session.execute(text(_models_sql(table)))).all()
        oldest = (
            await session.execute(text(_oldest_pending_sql(table)), {"max_attempts": max_attempts})
        ).scalar_one()
        counts = {str(row.model): int(row.rows) for row in models}
        recent = sum(int(row.recent) for row in models)
        result.append(EntityProgress(entity, counts, recent, float(oldest)))
    return result


@dataclass(frozen=True)
class SpaceCoverage:
    """One embedding space of an entity: how far its column is filled, how fast, how long left;
    also the item of the spaces routes' responses."""

    id: int
    entity: str
    state: str
    phase: str | None
    provider: str
    model: str
    dimensions: int
    storage: str
    column: str
    index: str
    total: int
    current: int
    pending: int
    parked: int
    embedded_last_minute: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def coverage_pct(self) -> float:
        return round(100.0 * self.current / self.total, 1) if self.total else 100.0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def rows_per_second(self) -> float:
        return round(self.embedded_last_minute / 60.0, 1)

    @computed_field(description="At the last minute's rate; null: stalled.")  # type: ignore[prop-decorator]
    @property
    def eta_seconds(self) -> float | None:
        """Seconds to 100% at the last minute's rate (None: stalled with rows waiting)."""
        if self.pending == 0:
            return 0.0
        rate = self.embedded_last_minute / 60.0
        return round(self.pending / rate, 1) if rate else None

    def as_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "coverage_pct": self.coverage_pct,
            "rows_per_second": self.rows_per_second,
            "eta_seconds": self.eta_seconds,
        }


async def space_coverage(session: AsyncSession, *, max_attempts: int = 3) -> list[SpaceCoverage]:
    """Every live embedding space with its coverage, rate and ETA."""
    from app.embedding.spaces import load_spaces

    result = []
    for space in await load_spaces(session):
        slot = space.slot
        c = slot.cols
        row = (
            await session.execute(
                text(
                    f"SELECT count(*), count(*) FILTER (WHERE {c.vector} IS NOT NULL AND "
                    f"{c.hash} = content_hash), "
                    f"count(*) FILTER (WHERE {c.needs_text} AND {c.attempts} < :m), "
                    f"count(*) FILTER (WHERE {c.needs_text} AND {c.attempts} >= :m), "
                    f"count(*) FILTER (WHERE {c.embedded_at} > now() - interval '60 seconds') "
                    f"FROM {slot.table}"
                ),
                {"m": max_attempts},
            )
        ).one()
        result.append(
            SpaceCoverage(
                space.id,
                space.entity,
                space.state,
                space.phase,
                space.provider_name,
                space.model,
                space.dimensions,
                space.storage,
                space.column_name,
                space.index_name,
                *(int(value) for value in row),
            )
        )
    return result
