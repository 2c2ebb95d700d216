"""Semantic search over messages and atoms: HNSW vector search, full-text, and their fusion.

Every vector search runs with `hnsw.ef_search` of at least the rows asked for, pgvector 0.8's
iterative index scan in relaxed order (so neither a filter nor dead index entries return fewer
rows than exist; the outer ORDER BY restores exact order), and custom plans (a cached generic
plan would keep whatever plan it was built with, possibly a sequential scan). Connections of
`app.db.create_engine` start with these settings (`app.db.search_settings`), so a search sets
only what differs from them, transaction-locally; on any other connection it sets them all.
Over a table whose HNSW index is valid and large enough, the plans other than the index scan
are off (`app.db.INDEX_PLANS`): the connections of a search engine start so, and the API's and
the console's searches run on one, so such a search sends no settings statement at all.
A vector-mode page is one statement: the nearest rows with their columns, the count of rows
not embedded yet and, for a query embedded for a space, the check that the space is still the
active one. Sent alone (no setting to change), it runs in autocommit: one round trip, no BEGIN
and COMMIT (`app.db.standalone`). No SQL is built from user strings: the fragments below are
fixed and every value is a bind parameter.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal
from weakref import WeakKeyDictionary

import numpy as np
from sqlalchemy import TextClause, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.core.config import DEFAULT_EF_SEARCH, Settings
from app.core.errors import NotFoundError, ServiceUnavailableError, ValidationError
from app.db import ANY_PLAN, INDEX_PLANS, SEARCH_SETTINGS_INFO, search_settings, standalone
from app.embedding.entities import ATOMS, MESSAGES, NEEDS_TEXT, Entity
from app.embedding.registry import EmbeddingRegistry
from app.embedding.spaces import Space

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
    model: str | None = None  # the model of the space searched: every row's and the query's


@dataclass(frozen=True)
class SearchTuning:
    ef_search: int = DEFAULT_EF_SEARCH
    max_scan_tuples: int = 20000
    # From this many rows on, a table whose HNSW index is valid is always searched through it;
    # below, the planner may choose an exact scan (as fast there, and exact).
    index_min_rows: int = 1000

    @classmethod
    def from_settings(cls, settings: Settings) -> SearchTuning:
        """The configured search settings (HNSW_EF_SEARCH, HNSW_MAX_SCAN_TUPLES,
        SEARCH_INDEX_MIN_ROWS): every caller that searches for users reads them here."""
        return cls(
            settings.hnsw_ef_search, settings.hnsw_max_scan_tuples, settings.search_index_min_rows
        )


_PLAN_FACTS_SECONDS = 30.0
# Per engine (its URL as a key renders the URL at every lookup: 0.09 ms, a tenth of a search).
_plan_facts: WeakKeyDictionary[Engine, dict[tuple[str, int], tuple[float, bool]]] = (
    WeakKeyDictionary()
)


async def _index_preferred(connection: AsyncConnection, entity: Entity, min_rows: int) -> bool:
    """Is the entity's HNSW index valid and its table at least `min_rows`? Read every 30 s per
    engine."""
    facts = _plan_facts.setdefault(connection.engine.sync_engine, {})
    key = (entity.table, min_rows)
    now = time.monotonic()
    cached = facts.get(key)
    if cached is not None and now - cached[0] < _PLAN_FACTS_SECONDS:
        return cached[1]
    sql = (
        "SELECT coalesce((SELECT i.indisvalid AND i.indisready FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = :index), false), "
        f"(SELECT count(*) FROM (SELECT 1 FROM {entity.table} LIMIT {int(min_rows)}) s)"
    )
    valid, rows = (await connection.execute(text(sql), {"index": entity.index})).one()
    preferred = bool(valid) and int(rows) >= min_rows
    facts[key] = (now, preferred)
    return preferred


async def _tune(
    connection: AsyncConnection,
    entity: Entity,
    tuning: SearchTuning,
    depth: int,
    *,
    space_id: int | None = None,
) -> tuple[int, bool]:
    """Before a search's first statement: set, for this transaction, the search settings the
    connection did not start with, and with `space_id` check the space (`check_space`), both in
    one statement. None at all on a search engine's connection (`create_engine(search=True)`)
    searching a large table at the default ef_search, unless a space is checked. It compares
    with what the connection started with, not with what an earlier search of the same
    transaction set: one search per transaction, as every caller does. Returns the ef_search
    and whether the transaction runs with INDEX_PLANS."""
    ef = min(max(tuning.ef_search, depth), MAX_DEPTH)
    wanted = search_settings(ef, tuning.max_scan_tuples)
    preferred = await _index_preferred(connection, entity, tuning.index_min_rows)
    wanted.update(INDEX_PLANS if preferred else ANY_PLAN)
    started_with = connection.info.get(SEARCH_SETTINGS_INFO)
    # An engine connection has what it started with and PostgreSQL's defaults; of any other
    # connection nothing is known, so everything is set.
    has = {} if started_with is None else {**ANY_PLAN, **started_with}
    changes = tuple((name, value) for name, value in wanted.items() if has.get(name) != value)
    if changes or space_id is not None:
        await _prelude(connection, entity, changes, space_id)
    return ef, preferred


_SPACE_ACTIVE = "EXISTS (SELECT 1 FROM embedding_spaces WHERE id = :space AND state = 'active')"


@lru_cache(maxsize=64)
def _prelude_sql(table: str, settings: int, space: bool) -> TextClause:
    columns = [f"set_config(:name{i}, :value{i}, true)" for i in range(settings)]
    if space:
        # Naming the table takes its lock before the statement's snapshot (see check_space).
        columns.append(
            f"{_SPACE_ACTIVE} AND NOT EXISTS (SELECT 1 FROM {table} WHERE false) AS space_ok"
        )
    return text("SELECT " + ", ".join(columns))


async def _prelude(
    connection: AsyncConnection,
    entity: Entity,
    changes: tuple[tuple[str, str], ...],
    space_id: int | None,
) -> None:
    params: dict[str, Any] = {}
    for i, (name, value) in enumerate(changes):
        params[f"name{i}"], params[f"value{i}"] = name, value
    if space_id is not None:
        params["space"] = space_id
    statement = _prelude_sql(entity.table, len(changes), space_id is not None)
    try:
        # On the connection: no ORM execution path (about 0.15 ms a call) on every API search.
        row = (await connection.execute(statement, params)).one()
    except DBAPIError as exc:
        _moved_if_replanned(exc)
        raise
    if space_id is not None and not row.space_ok:
        raise SpaceMoved


def _where(
    entity: Entity, filters: SearchFilters, exclude: uuid.UUID | None
) -> tuple[str, dict[str, Any]]:
    where, params = filters.sql(entity)
    return _excluding(where, params, exclude), params


def _excluding(where: str, params: dict[str, Any], exclude: uuid.UUID | None) -> str:
    """`where` without the row `exclude` (its parameter added to `params`)."""
    if exclude is None:
        return where
    params["exclude"] = exclude
    return where + " AND id <> :exclude"


def _nearest_sql(entity: Entity, columns: str, where: str, depth: int) -> str:
    """The `depth` nearest embedded rows (`columns` and their distance) as a LIMIT subquery,
    planned on its own: no outer qual is pushed into it."""
    # LIMIT is an int we validated, inlined so every plan sees the real row count.
    return (
        f"(SELECT {columns}, embedding <=> :q AS distance FROM {entity.table} "
        f"WHERE embedding IS NOT NULL AND {where} ORDER BY embedding <=> :q LIMIT {int(depth)}) "
        "nearest"
    )


_WITHIN = "(CAST(:max_distance AS float8) IS NULL OR distance <= :max_distance)"
# The nearest rows sorted again, exactly, before a page's OFFSET cuts them: the index scan
# returns them in relaxed order once it iterates (a filter, dead entries), and ORDER BY
# distance alone would be taken as already satisfied by the subquery's own ORDER BY, so there
# would be no sort. `+ 0` is a different expression.
_EXACT_ORDER = "distance + 0"


def _bind(query: np.ndarray) -> np.ndarray:
    """The query vector as a parameter: a float32 array, which pgvector's codecs encode as
    whatever the column is (vector or halfvec), so one statement serves either storage."""
    return np.asarray(query, dtype=np.float32)


class SpaceMoved(Exception):  # noqa: N818 - a signal to retry, not an error to show
    """The space the query was embedded for is no longer the active one (a cutover): embed the
    query again with the active space's model and search again."""


async def check_space(session: AsyncSession, entity: Entity, space_id: int) -> None:
    """Raise SpaceMoved unless `space_id` is the entity's active space.

    The statement names the entity's table, so it takes the table's lock before its snapshot,
    and the lock is held to the end of the transaction: a cutover (which renames the table's
    columns under an exclusive lock) either committed before this statement saw the spaces, or
    waits until this search is done. The rest of the transaction reads one model's column.
    `search` makes this check in the statement that sets its settings (`_tune`), or for a
    vector page in the page's own statement (`_page_sql`), which holds that lock as well.
    """
    await _prelude(await session.connection(), entity, (), space_id)


def _moved_if_replanned(exc: DBAPIError) -> None:
    """A statement prepared before a cutover whose result type changed (the vector column's
    dimension or type): the driver dropped its cache; the caller searches again."""
    if "cached statement plan is invalid" in str(exc) or "InvalidCachedStatement" in repr(
        getattr(exc, "orig", exc)
    ):
        raise SpaceMoved from None


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
    where, params = _where(entity, filters, exclude)
    nearest = _nearest_sql(entity, "id", where, depth)
    sql = f"SELECT id, distance FROM {nearest} WHERE {_WITHIN} ORDER BY {_EXACT_ORDER}"
    params.update(q=_bind(query), max_distance=max_distance)
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
    params = {"ids": [h.id for h in hits], "q": _bind(query)}
    rows = {row["id"]: dict(row) for row in (await session.execute(text(sql), params)).mappings()}
    for hit in hits:
        row = rows.get(hit.id, {})
        hit.similarity = row.pop("similarity", None)
        hit.row = row


async def count_not_embedded(session: AsyncSession, entity: Entity, filters: SearchFilters) -> int:
    """Rows of the searched set that have no embedding yet (so are no vector candidates)."""
    where, params = filters.sql(entity)
    return int((await session.execute(text(_pending_sql(entity, where)), params)).scalar_one())


def _pending_sql(entity: Entity, where: str) -> str:
    # The first condition is the predicate of the partial index ix_<table>_embedding_pending,
    # which holds only the rows waiting for an embedding: the count reads that index.
    return (
        f"SELECT count(*) FROM {entity.table} WHERE {NEEDS_TEXT} AND embedding IS NULL AND {where}"
    )


@lru_cache(maxsize=512)
def _page_sql(
    entity: Entity, where: str, count_where: str, limit: int, offset: int, space: bool = False
) -> TextClause:
    """The statement of a vector page; cached, as text() parses the string for its bind
    parameters every time it is built."""
    # The count is a one-row subquery joined to the page, so it comes back even when the page
    # is empty; the page is the ranks offset + 1 .. offset + limit of the nearest rows, their
    # columns read by the index scan itself (no join back to the table), and the threshold
    # applies to those ranks, outside the LIMIT. A subquery with a LIMIT is planned on its own
    # (no qual is pushed into it): planning this statement takes a third of the time the
    # materialized CTE and its join took (0.18 vs 0.51 ms measured at 100k rows).
    # With `space`, the space check is a condition of no column: the planner makes it a
    # one-time filter evaluated before anything else runs, so a query embedded for a space that
    # is no longer active gets no row at all (not even the count), and no vector of another
    # model is compared with it. The statement names the table, so its lock comes before its
    # snapshot (see check_space): it runs alone, in autocommit.
    columns = _COLUMNS[entity.name]
    nearest = _nearest_sql(entity, columns, where, limit + offset)
    gate = f" WHERE {_SPACE_ACTIVE}" if space else ""
    return text(
        f"SELECT pending.count AS not_embedded, page.* FROM ({_pending_sql(entity, count_where)}) "
        f"pending LEFT JOIN LATERAL (SELECT {columns}, distance FROM {nearest} "
        f"WHERE {_WITHIN} ORDER BY {_EXACT_ORDER} OFFSET {int(offset)}) page ON TRUE{gate} "
        "ORDER BY page.distance"
    )


def _page_statement(
    entity: Entity,
    query: np.ndarray,
    *,
    limit: int,
    offset: int,
    filters: SearchFilters,
    max_distance: float | None,
    exclude: uuid.UUID | None,
    space_id: int | None,
) -> tuple[TextClause, dict[str, Any]]:
    """The statement of a vector page and its parameters: what `search` runs (vector_page)
    and explain_vector_page explains."""
    # The not-embedded count takes the filters; the page also leaves `exclude` out.
    count_where, params = filters.sql(entity)
    where = _excluding(count_where, params, exclude)
    params.update(q=_bind(query), max_distance=max_distance)
    if space_id is not None:
        params["space"] = space_id
    statement = _page_sql(entity, where, count_where, limit, offset, space_id is not None)
    return statement, params


async def vector_page(
    connection: AsyncConnection, statement: TextClause, params: dict[str, Any], *, offset: int
) -> tuple[list[SearchHit], int]:
    """One vector-mode page (`_page_statement`), its rows loaded, and the not-embedded count:
    one statement, which with a space raises SpaceMoved unless that space is the active one."""
    # On the connection: a text statement needs nothing of the ORM's execution path, which
    # costs about 0.15 ms a call (measured), a tenth of a small search.
    try:
        async with standalone(connection):
            result = await connection.execute(statement, params)
    except DBAPIError as exc:
        _moved_if_replanned(exc)
        raise
    # zip with the keys read once: a mapping per row took twice as long
    keys = list(result.keys())
    rows = [dict(zip(keys, row, strict=True)) for row in result.all()]
    if not rows:  # only the space check can leave the count's row out
        raise SpaceMoved
    not_embedded = int(rows[0]["not_embedded"])
    hits = []
    for rank, row in enumerate((r for r in rows if r["id"] is not None), start=offset + 1):
        del row["not_embedded"]
        distance = row.pop("distance")
        hits.append(
            SearchHit(
                id=row["id"],
                row=row,
                similarity=1.0 - distance,
                matched_by=["vector"],
                vector_rank=rank,
                score=1.0 / (RRF_K + rank),
            )
        )
    return hits, not_embedded


async def explain_vector_page(
    session: AsyncSession,
    entity: Entity,
    query: np.ndarray,
    *,
    limit: int = 10,
    offset: int = 0,
    threshold: float | None = None,
    filters: SearchFilters | None = None,
    tuning: SearchTuning | None = None,
    space_id: int | None = None,
) -> str:
    """The plan of the statement `search` runs for a vector page, with the settings it runs
    under (for tests and operators: which index a search uses); with `space_id`, the API's
    statement, gated by its space check."""
    filters = filters or SearchFilters()
    connection = await session.connection()
    await _tune(connection, entity, tuning or SearchTuning(), limit + offset)
    statement, params = _page_statement(
        entity,
        query,
        limit=limit,
        offset=offset,
        filters=filters,
        max_distance=None if threshold is None else 1.0 - threshold,
        exclude=None,
        space_id=space_id,
    )
    result = await connection.execute(text(f"EXPLAIN {statement.text}"), params)
    return "\n".join(str(row[0]) for row in result)


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
    space_id: int | None = None,
) -> SearchPage:
    """One page of results, nearest first (vector) or by reciprocal rank fusion (hybrid).

    With `space_id` (the space `query` was embedded for) the search reads that space's vectors
    only, or raises SpaceMoved when it is not the active one any more.
    """
    filters = filters or SearchFilters()
    tuning = tuning or SearchTuning()
    if limit + offset > MAX_DEPTH:
        raise ValidationError(f"limit + offset must be at most {MAX_DEPTH}")
    depth = limit + offset if mode == "vector" else min(max(4 * (limit + offset), 40), MAX_DEPTH)
    # A vector page checks the space in its own statement; the other modes, before their first.
    checked_first = None if mode == "vector" else space_id
    connection = await session.connection()
    ef, index_plans = await _tune(connection, entity, tuning, depth, space_id=checked_first)
    max_distance = None if threshold is None else 1.0 - threshold
    if mode == "vector":
        statement, params = _page_statement(
            entity,
            query,
            limit=limit,
            offset=offset,
            filters=filters,
            max_distance=max_distance,
            exclude=exclude,
            space_id=space_id,
        )
        hits, not_embedded = await vector_page(connection, statement, params, offset=offset)
        return SearchPage(hits, mode, limit, offset, ef, not_embedded)
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
        if index_plans:  # the full-text scan needs the plans the vector one may not have
            await _prelude(connection, entity, tuple(ANY_PLAN.items()), None)
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
    to_numpy = getattr(vector, "to_numpy", None)  # pgvector's Vector or HalfVector
    return np.asarray(to_numpy() if to_numpy else vector, dtype=np.float32)


ENTITY_BY_NAME = {"messages": MESSAGES, "atoms": ATOMS}


@dataclass(frozen=True)
class TextQuery:
    """A search as a user asks it: the text, its page, threshold, filters and mode."""

    text: str
    limit: int = 10
    offset: int = 0
    threshold: float | None = None
    filters: SearchFilters | None = None
    mode: Mode = "vector"


SPACE_RETRIES = 4


async def _active_space(
    session: AsyncSession, registry: EmbeddingRegistry, entity: Entity, *, fresh: bool
) -> Space:
    """The entity's active space (cached by config version; read again after a cutover)."""
    if fresh:
        await registry.book.refresh(session, force=True)
    return await registry.book.active(session, entity.name)


async def search_text(
    session: AsyncSession,
    registry: EmbeddingRegistry,
    entity: Entity,
    query: TextQuery,
    tuning: SearchTuning,
) -> SearchPage:
    """Embed the query with the active space's model, then one page of `search` over that
    space's vectors only; a cutover in between is seen and the query embedded again."""
    for attempt in range(SPACE_RETRIES):
        space = await _active_space(session, registry, entity, fresh=attempt > 0)
        entry = await registry.for_space(session, space)
        vector = await entry.service.embed_query(query.text)
        try:
            page = await search(
                session,
                entity,
                vector,
                query_text=query.text,
                limit=query.limit,
                offset=query.offset,
                threshold=query.threshold,
                filters=query.filters,
                mode=query.mode,
                tuning=tuning,
                space_id=space.id,
            )
        except SpaceMoved:
            await session.rollback()
            continue
        page.model = entry.spec.model
        return page
    raise ServiceUnavailableError("the embedding space kept changing; try again")


async def similar_to(
    session: AsyncSession,
    entity: Entity,
    row_id: uuid.UUID,
    *,
    limit: int,
    threshold: float | None,
    tuning: SearchTuning,
    registry: EmbeddingRegistry | None = None,
) -> SearchPage:
    """The rows nearest to a stored row, the row itself left out; with a registry, checked to
    read the active space's vectors only (the row's and the others' of one model)."""
    for attempt in range(SPACE_RETRIES):
        model = None
        try:
            if registry is not None:
                space = await _active_space(session, registry, entity, fresh=attempt > 0)
                model = (await registry.for_space(session, space)).spec.model
                await check_space(session, entity, space.id)
            try:
                vector = await embedding_of(session, entity, row_id)
            except DBAPIError as exc:
                _moved_if_replanned(exc)
                raise
            page = await search(
                session,
                entity,
                vector,
                limit=limit,
                threshold=threshold,
                tuning=tuning,
                exclude=row_id,
            )
        except SpaceMoved:
            await session.rollback()
            continue
        page.model = model
        return page
    raise ServiceUnavailableError("the embedding space kept changing; try again")
