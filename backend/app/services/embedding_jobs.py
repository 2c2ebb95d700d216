"""Embed rows by id: claim them, embed their current text, write every vector in one statement.

Idempotent and safe under concurrency. Rows are claimed with FOR UPDATE SKIP LOCKED, so two
workers given the same ids embed each row once; rows already current are skipped; a vector is
written only if the row's text is still the one that was embedded. One bad row records its
error on the row; after `max_attempts` it is parked. A provider outage raises, so the task
fails and is retried, and nothing is written.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from pgvector import Vector
from sqlalchemy.ext.asyncio import AsyncEngine

from app.services.embedding_service import EmbeddingService
from app.services.entities import Entity

logger = logging.getLogger(__name__)


@dataclass
class EmbedStats:
    embedded: int = 0
    skipped: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


async def driver_connection(conn: Any) -> Any:
    """The asyncpg connection under a SQLAlchemy AsyncConnection."""
    raw = await conn.get_raw_connection()
    return raw.driver_connection


def _claim_sql(entity: Entity) -> str:
    return f"""
        SELECT id, {entity.text_sql} AS text, content_hash FROM {entity.table}
        WHERE id = ANY($1::uuid[])
          AND (embedding_content_hash IS DISTINCT FROM content_hash
               OR embedding_model IS DISTINCT FROM $2)
          AND embedding_attempts < $3
        ORDER BY id
        FOR UPDATE SKIP LOCKED
    """


def _write_sql(entity: Entity) -> str:
    return f"""
        UPDATE {entity.table} AS t
        SET embedding = v.embedding, embedding_model = $4, embedded_at = now(),
            embedding_content_hash = v.hash, embedding_error = NULL, embedding_attempts = 0
        FROM unnest($1::uuid[], $2::vector[], $3::text[]) AS v(id, embedding, hash)
        WHERE t.id = v.id AND t.content_hash = v.hash
    """


def _fail_sql(entity: Entity) -> str:
    return f"""
        UPDATE {entity.table} AS t
        SET embedding_error = v.error, embedding_attempts = t.embedding_attempts + 1
        FROM unnest($1::uuid[], $2::text[]) AS v(id, error)
        WHERE t.id = v.id
    """


def _affected(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


async def embed_rows(
    engine: AsyncEngine,
    entity: Entity,
    ids: Sequence[uuid.UUID],
    service: EmbeddingService,
    *,
    model: str,
    max_attempts: int,
) -> EmbedStats:
    """Embed the rows among `ids` that need it; return embedded/skipped/failed counts."""
    stats = EmbedStats()
    async with engine.connect() as conn:
        apg = await driver_connection(conn)
        async with apg.transaction():
            rows = await apg.fetch(_claim_sql(entity), list(ids), model, max_attempts)
            stats.skipped = len(ids) - len(rows)
            if not rows:
                return stats
            outcomes = await service.embed_documents([row["text"] for row in rows])
            good = [
                (row, out.vector)
                for row, out in zip(rows, outcomes, strict=True)
                if out.vector is not None
            ]
            bad = [
                (row["id"], out.error or "unknown error")
                for row, out in zip(rows, outcomes, strict=True)
                if out.vector is None
            ]
            if good:
                status = await apg.execute(
                    _write_sql(entity),
                    [row["id"] for row, _ in good],
                    # Vector objects: a bare list of arrays would be taken for a 2-D array.
                    [Vector(np.asarray(vector, dtype=np.float32)) for _, vector in good],
                    [row["content_hash"] for row, _ in good],
                    model,
                )
                stats.embedded = _affected(status)
                # Rows edited after they were claimed cannot be: the claim locks them.
                stats.skipped += len(good) - stats.embedded
            if bad:
                await apg.execute(
                    _fail_sql(entity),
                    [row_id for row_id, _ in bad],
                    [error[:1000] for _, error in bad],
                )
                stats.failed = len(bad)
    return stats
