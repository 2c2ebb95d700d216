"""What `tasktracker index status` shows: each HNSW index, its health, size, last build, and a
build running now."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.indexes.catalog import (
    ACTIVE_STORAGE_SQL,
    SPACES_EXIST_SQL,
    VECTOR_INDEXES,
    VectorIndex,
    build_note,
    indexes_for_storage,
)
from app.indexes.progress import describe, reading_of


@dataclass(frozen=True)
class IndexReport:
    name: str
    table: str
    exists: bool
    valid: bool
    definition_ok: bool
    definition: str | None
    size_bytes: int
    last_build: dict[str, Any] | None
    building: str | None

    @property
    def healthy(self) -> bool:
        return self.exists and self.valid and self.definition_ok

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy}


async def index_reports(conn: AsyncConnection) -> list[IndexReport]:
    """One report per expected HNSW index (with the opclass of its entity's active space)."""
    return [await _report(conn, index) for index in await expected_indexes(conn)]


async def expected_indexes(conn: AsyncConnection) -> tuple[VectorIndex, ...]:
    """The HNSW indexes the active spaces call for (a halfvec space's with halfvec_cosine_ops)."""
    if not (await conn.execute(text(SPACES_EXIST_SQL))).scalar():
        return VECTOR_INDEXES
    return indexes_for_storage((await conn.execute(text(ACTIVE_STORAGE_SQL))).scalars())


async def _report(conn: AsyncConnection, index: VectorIndex) -> IndexReport:
    row = (await conn.execute(text(index.report_sql))).first()
    reading = (await conn.execute(text(index.progress_sql))).first()
    building = None if reading is None else describe(reading_of(reading))
    if row is None:
        return IndexReport(index.name, index.table, False, False, False, None, 0, None, building)
    valid, ready, matches, definition, size, comment = row
    return IndexReport(
        index.name,
        index.table,
        True,
        bool(valid and ready),
        bool(matches),
        definition,
        int(size or 0),
        _last_build(comment),
        building,
    )


def _last_build(comment: str | None) -> dict[str, Any] | None:
    """The build note app.indexes.build keeps as the index's comment (None if built elsewhere)."""
    return build_note(comment) or None
