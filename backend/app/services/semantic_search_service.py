"""Semantic search over messages and atoms: HNSW vector search, full-text, and their fusion.

Every query runs in its own transaction with `hnsw.ef_search` set for it (never below the rows
asked for), pgvector 0.8 iterative index scans when a filter narrows the set (so a filter never
returns fewer rows than exist), and custom plans (a cached generic plan would keep whatever
plan it was built with, possibly a sequential scan). No SQL is built from user strings: the
fragments below are fixed and every value is a bind parameter.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np
from pgvector import Vector
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import NotFoundError, ValidationError
from app.services.entities import ATOMS, MESSAGES, Entity

RRF_K = 60
MAX_DEPTH = 1000  # pgvector's ceiling for hnsw.ef_search; limit + offset stays within it
Mode = Literal["vector", "hybrid"]

_COLUMNS = {
    "messages": "id, external_id, author, channel, content, sent_at, extraction_status",
    "atoms": "id, type, title, content, confidence, created_at",
}
_FTS = {
    "messages": "content",
    "atoms": "(title || ' '::text) || content",
}


@dataclass(frozen=True)
class SearchFilters:
    """Optional narrowing; each set field adds one fixed SQL condition."""

    channel: str | None = None
    author: str | None = None
    sent_after: datetime | None = None
    sent_before: datetime | None = None
    atom_types: tuple[str, ...] = ()
    topic_id: uuid.UUID | None = None

    def sql(self, entity: Entity) -> tuple[str, dict[str, Any]]:
        conditions, params = ["TRUE"], {}
        if entity is MESSAGES:
            for name, clause in (
                ("channel", "channel = :f_channel"),
                ("author", "author = :f_author"),
                ("sent_after", "sent_at >= :f_sent_after"),
                ("sent_before", "sent_at < :f_sent_before"),
            ):
                if getattr(self, name) is not None:
                    conditions.append(clause)
                    params[f"f_{name}"] = getattr(self, name)
        else:
            if self.atom_types:
                conditions.append("type = ANY(:f_types)")
                params["f_types"] = list(self.atom_types)
            if self.topic_id is not None:
                conditions.append(
                    "id IN (SELECT atom_id FROM topic_atoms WHERE topic_id = :f_topic)"
                )
                params["f_topic"] = self.topic_id
        return " AND ".join(conditions), params

    @property
    def narrowing(self) -> bool:
        return any(
            value not in (None, ())
            for value in (
                self.channel,
                self.author,
                self.sent_after,
                self.sent_before,
                self.atom_types,
                self.topic_id,
            )
        )


@dataclass
class SearchHit:
    id: uuid.UUID
    row: dict[str, Any]
    similarity: float | None
    matched_by: list[str] = field(default_factory=list)
    vector_rank: int | None = None
    fulltext_rank: int | None = None
    score: float = 0.0


@dataclass
class SearchPage:
    hits: list[SearchHit]
    mode: Mode
    limit: int
    offset: int
    ef_search: int
    not_embedded: int


@dataclass(frozen=True)
class SearchTuning:
    ef_search: int = 64
    max_scan_tuples: int = 20000


async def _tune(session: AsyncSession, tuning: SearchTuning, depth: int, filtered: bool) -> int:
    ef = min(max(tuning.ef_search, depth), MAX_DEPTH)
    await session.execute(
        text(
            "SELECT set_config('hnsw.ef_search', :ef, true), "
            "set_config('hnsw.iterative_scan', :iterative, true), "
            "set_config('hnsw.max_scan_tuples', :max_scan, true), "
            "set_config('plan_cache_mode', 'force_custom_plan', true)"
        ),
        {
            "ef": str(ef),
            "iterative": "relaxed_order" if filtered else "off",
            "max_scan": str(tuning.max_scan_tuples),
        },
    )
    return ef


async def vector_candidates(
    session: AsyncSession,
    entity: Entity,
    query: np.ndarray,
    *,
    depth: int,
    filters: SearchFilters,
    max_distance: float | None,
    exclude: uuid.UUID | None = None,
) -> list[tuple[uuid.UUID, float]]:
    """(id, cosine distance) of the `depth` nearest embedded rows, nearest first."""
    where, params = filters.sql(entity)
    if exclude is not None:
        where += " AND id <> :exclude"
        params["exclude"] = exclude
    # LIMIT is an int we validated, inlined so every plan sees the real row count.
    sql = (
        f"WITH nearest AS MATERIALIZED (SELECT id, embedding <=> :q AS distance FROM {entity.table} "
        f"WHERE embedding IS NOT NULL AND {where} ORDER BY embedding <=> :q LIMIT {int(depth)}) "
        "SELECT id, distance FROM nearest "
        "WHERE CAST(:max_distance AS float8) IS NULL OR distance <= :max_distance ORDER BY distance"
    )
    params.update(q=Vector(np.asarray(query, dtype=np.float32)), max_distance=max_distance)
    return [(row.id, float(row.distance)) for row in await session.execute(text(sql), params)]


async def fulltext_candidates(
    session: AsyncSession, entity: Entity, query_text: str, *, depth: int, filters: SearchFilters
) -> list[uuid.UUID]:
    """Ids matching the words of `query_text` (simple or english configuration), best first."""
    where, params = filters.sql(entity)
    doc = _FTS[entity.name]
    sql = (
        f"SELECT id FROM {entity.table}, websearch_to_tsquery('simple', :qt) qs, "
        "websearch_to_tsquery('english', :qt) qe "
        f"WHERE (to_tsvector('simple'::regconfig, {doc}) @@ qs "
        f"OR to_tsvector('english'::regconfig, {doc}) @@ qe) AND {where} "
        f"ORDER BY greatest(ts_rank_cd(to_tsvector('simple'::regconfig, {doc}), qs), "
        f"ts_rank_cd(to_tsvector('english'::regconfig, {doc}), qe)) DESC, id LIMIT {int(depth)}"
    )
    params["qt"] = query_text
    return [row.id for row in await session.execute(text(sql), params)]


def fuse(vector_ids: list[uuid.UUID], fulltext_ids: list[uuid.UUID]) -> list[SearchHit]:
    """Reciprocal rank fusion: score = sum of 1 / (60 + rank) over the lists a row is in."""
    hits: dict[uuid.UUID, SearchHit] = {}
    for source, ids in (("vector", vector_ids), ("fulltext", fulltext_ids)):
        for rank, row_id in enumerate(ids, start=1):
            hit = hits.setdefault(row_id, SearchHit(id=row_id, row={}, similarity=None))
            hit.matched_by.append(source)
            hit.score += 1.0 / (RRF_K + rank)
            if source == "vector":
                hit.vector_rank = rank
            else:
                hit.fulltext_rank = rank
    return sorted(hits.values(), key=lambda h: (-h.score, str(h.id)))


async def _load_rows(
    session: AsyncSession, entity: Entity, hits: list[SearchHit], query: np.ndarray
) -> None:
    if not hits:
        return
    sql = (
        f"SELECT {_COLUMNS[entity.name]}, CASE WHEN embedding IS NULL THEN NULL "
        f"ELSE 1 - (embedding <=> :q) END AS similarity FROM {entity.table} WHERE id = ANY(:ids)"
    )
    params = {"ids": [h.id for h in hits], "q": Vector(np.asarray(query, dtype=np.float32))}
    rows = {row["id"]: dict(row) for row in (await session.execute(text(sql), params)).mappings()}
    for hit in hits:
        row = rows.get(hit.id, {})
        hit.similarity = row.pop("similarity", None)
        hit.row = row


async def count_not_embedded(session: AsyncSession, entity: Entity, filters: SearchFilters) -> int:
    """Rows of the searched set that have no embedding yet (so are no vector candidates)."""
    where, params = filters.sql(entity)
    sql = (
        f"SELECT count(*) FROM {entity.table} WHERE embedding_content_hash IS DISTINCT FROM "
        f"content_hash AND embedding IS NULL AND {where}"
    )
    return int((await session.execute(text(sql), params)).scalar_one())


async def search(
    session: AsyncSession,
    entity: Entity,
    query: np.ndarray,
    *,
    query_text: str | None = None,
    limit: int = 10,
    offset: int = 0,
    threshold: float | None = None,
    filters: SearchFilters | None = None,
    mode: Mode = "vector",
    tuning: SearchTuning | None = None,
    exclude: uuid.UUID | None = None,
) -> SearchPage:
    """One page of results, nearest first (vector) or by reciprocal rank fusion (hybrid)."""
    filters = filters or SearchFilters()
    tuning = tuning or SearchTuning()
    if limit + offset > MAX_DEPTH:
        raise ValidationError(f"limit + offset must be at most {MAX_DEPTH}")
    depth = limit + offset if mode == "vector" else min(max(4 * (limit + offset), 40), MAX_DEPTH)
    ef = await _tune(session, tuning, depth, filters.narrowing or exclude is not None)
    max_distance = None if threshold is None else 1.0 - threshold
    nearest = await vector_candidates(
        session,
        entity,
        query,
        depth=depth,
        filters=filters,
        max_distance=max_distance,
        exclude=exclude,
    )
    fulltext: list[uuid.UUID] = []
    if mode == "hybrid" and query_text:
        fulltext = await fulltext_candidates(
            session, entity, query_text, depth=depth, filters=filters
        )
    hits = fuse([row_id for row_id, _ in nearest], fulltext)[offset : offset + limit]
    await _load_rows(session, entity, hits, query)
    not_embedded = await count_not_embedded(session, entity, filters)
    return SearchPage(hits, mode, limit, offset, ef, not_embedded)


async def embedding_of(session: AsyncSession, entity: Entity, row_id: uuid.UUID) -> np.ndarray:
    """The stored vector of a row; NotFoundError if the row is missing or not embedded yet."""
    sql = f"SELECT embedding FROM {entity.table} WHERE id = :id"
    row = (await session.execute(text(sql), {"id": row_id})).first()
    if row is None:
        raise NotFoundError(f"{entity.name[:-1]} {row_id} not found")
    if row.embedding is None:
        raise NotFoundError(f"{entity.name[:-1]} {row_id} has no embedding yet", status_code=409)
    vector = row.embedding
    return vector.to_numpy() if isinstance(vector, Vector) else np.asarray(vector, dtype=np.float32)


ENTITY_BY_NAME = {"messages": MESSAGES, "atoms": ATOMS}
