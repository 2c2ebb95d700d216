"""Rows the pipeline gave up on (parked) or is still retrying (failed), and the retry of them."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.embedding.entities import NEEDS_TEXT, Entity
from app.embedding.queue import Enqueue, publish


@dataclass(frozen=True)
class FailedRow:
    entity: str
    id: uuid.UUID
    text: str  # the first characters of what is embedded
    error: str | None
    attempts: int
    parked: bool
    updated_at: datetime


def _failed_sql(entity: Entity) -> str:
    return f"""
        SELECT id, left({entity.text_sql}, 160) AS text, embedding_error, embedding_attempts,
               embedding_attempts >= :max_attempts AS parked, updated_at
        FROM {entity.table}
        WHERE {NEEDS_TEXT} AND embedding_attempts > 0
        ORDER BY embedding_attempts >= :max_attempts DESC, updated_at
        LIMIT :limit
    """


async def failed_rows(
    engine: AsyncEngine, entity: Entity, *, max_attempts: int, limit: int = 50
) -> list[FailedRow]:
    """Rows without a current embedding that failed at least once, parked ones first."""
    async with engine.connect() as conn:
        result = await conn.execute(
            text(_failed_sql(entity)), {"max_attempts": max_attempts, "limit": limit}
        )
        return [FailedRow(entity.name, *row) for row in result.all()]


async def retry_rows(
    engine: AsyncEngine,
    enqueue: Enqueue,
    entity: Entity,
    ids: Sequence[uuid.UUID] | None,
    *,
    batch_size: int,
) -> tuple[int, int]:
    """Give failed rows (these ids, or all of the entity's) fresh attempts and queue them.

    Returns (rows reset, rows published); rows that could not be published stay pending for
    the sweeper, with their attempts reset.
    """
    where = f"{NEEDS_TEXT} AND embedding_attempts > 0"
    params: dict[str, object] = {}
    if ids is not None:
        where += " AND id = ANY(:ids)"
        params["ids"] = list(ids)
    async with engine.begin() as conn:
        reset = list(
            (
                await conn.execute(
                    text(
                        f"UPDATE {entity.table} SET embedding_attempts = 0 WHERE {where} "
                        "RETURNING id"
                    ),
                    params,
                )
            ).scalars()
        )
    published, _ = await publish(engine, enqueue, entity, reset, batch_size=batch_size)
    return len(reset), published
