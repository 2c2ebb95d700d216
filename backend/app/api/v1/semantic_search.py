"""Semantic search over messages and atoms, and similar items."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.api.auth import AUTH_RESPONSES, SearchAccess
from app.api.deps import ReadSessionDep, StateDep
from app.api.limits import RATE_LIMIT_RESPONSES, RouteGroup, rate_limit
from app.core.errors import ServiceUnavailableError
from app.observability.metrics import observe_search
from app.schemas.search import (
    AtomSearchRequest,
    MessageSearchRequest,
    SearchHitOut,
    SearchRequest,
    SearchResponse,
)
from app.services import semantic_search_service as search
from app.services.embedding_spaces import Space
from app.services.entities import ATOMS, MESSAGES, Entity

router = APIRouter(
    prefix="/semantic_search",
    tags=["semantic search"],
    dependencies=[SearchAccess, rate_limit(RouteGroup.search, SearchAccess)],
    responses=AUTH_RESPONSES | RATE_LIMIT_RESPONSES,
)


def _response(
    query: str, page: search.SearchPage, started: float, model: str | None = None
) -> SearchResponse:
    return SearchResponse(
        query=query,
        embedding_model=model,
        mode=page.mode,
        limit=page.limit,
        offset=page.offset,
        results=[
            SearchHitOut(
                id=hit.id,
                similarity=None if hit.similarity is None else round(float(hit.similarity), 6),
                score=round(hit.score, 6),
                matched_by=hit.matched_by,
                vector_rank=hit.vector_rank,
                fulltext_rank=hit.fulltext_rank,
                item=_jsonable(hit.row),
            )
            for hit in page.hits
        ],
        not_embedded=page.not_embedded,
        ef_search=page.ef_search,
        took_ms=round((time.perf_counter() - started) * 1000, 2),
    )


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {
        key: (str(value) if isinstance(value, uuid.UUID) else value) for key, value in row.items()
    }


async def _search(
    state: StateDep,
    session: ReadSessionDep,
    entity: Entity,
    body: SearchRequest,
    filters: search.SearchFilters,
) -> SearchResponse:
    started = time.perf_counter()
    with observe_search(entity.name, body.mode):
        for attempt in range(SPACE_RETRIES):
            # The query is embedded by the active space's model and compared with its vectors
            # only; a cutover in between is seen by the search and the query embedded again.
            space = await _active_space(state, session, entity, fresh=attempt > 0)
            entry = await state.registry.for_space(session, space)
            vector = await entry.service.embed_query(body.query)
            try:
                page = await search.search(
                    session,
                    entity,
                    vector,
                    query_text=body.query,
                    limit=body.limit,
                    offset=body.offset,
                    threshold=body.threshold,
                    filters=filters,
                    mode=body.mode,
                    tuning=search.SearchTuning.from_settings(state.settings),
                    space_id=space.id,
                )
                break
            except search.SpaceMoved:
                await session.rollback()
        else:
            raise ServiceUnavailableError("the embedding space kept changing; try again")
    await session.commit()
    return _response(body.query, page, started, entry.spec.model)


SPACE_RETRIES = 4


async def _active_space(
    state: StateDep, session: ReadSessionDep, entity: Entity, *, fresh: bool
) -> Space:
    """The entity's active space (cached by config version; read again after a cutover)."""
    if fresh:
        await state.registry.book.refresh(session, force=True)
    return await state.registry.book.active(session, entity.name)


@router.post("/messages", summary="Search messages by meaning")
async def search_messages(
    body: MessageSearchRequest, state: StateDep, session: ReadSessionDep
) -> SearchResponse:
    """Messages nearest to the query (cosine, HNSW); `mode=hybrid` adds full-text matches."""
    filters = search.SearchFilters(
        channel=body.channel,
        author=body.author,
        sent_after=body.sent_after,
        sent_before=body.sent_before,
    )
    return await _search(state, session, MESSAGES, body, filters)


@router.post("/atoms", summary="Search atoms by meaning")
async def search_atoms(
    body: AtomSearchRequest, state: StateDep, session: ReadSessionDep
) -> SearchResponse:
    """Atoms nearest to the query, optionally of some types or one topic."""
    filters = search.SearchFilters(
        atom_types=tuple(t.value for t in body.types), topic_id=body.topic_id
    )
    return await _search(state, session, ATOMS, body, filters)


async def _similar(
    state: StateDep,
    session: ReadSessionDep,
    entity: Entity,
    row_id: uuid.UUID,
    limit: int,
    threshold: float | None,
) -> SearchResponse:
    started = time.perf_counter()
    with observe_search(entity.name, "similar"):
        for attempt in range(SPACE_RETRIES):
            space = await _active_space(state, session, entity, fresh=attempt > 0)
            entry = await state.registry.for_space(session, space)
            try:
                # checked first: the row's vector and the others' are then of one model
                await search.check_space(session, entity, space.id)
                vector = await search.embedding_of(session, entity, row_id)
                page = await search.search(
                    session,
                    entity,
                    vector,
                    limit=limit,
                    threshold=threshold,
                    tuning=search.SearchTuning.from_settings(state.settings),
                    exclude=row_id,
                )
                break
            except search.SpaceMoved:
                await session.rollback()
        else:
            raise ServiceUnavailableError("the embedding space kept changing; try again")
    await session.commit()
    return _response(str(row_id), page, started, entry.spec.model)


Limit = Annotated[int, Query(ge=1, le=100)]
Threshold = Annotated[
    float | None, Query(ge=-1.0, le=1.0, description="e.g. 0.95 for near-duplicates")
]


@router.get("/messages/{message_id}/similar", summary="Messages similar to a message")
async def similar_messages(
    message_id: uuid.UUID,
    state: StateDep,
    session: ReadSessionDep,
    limit: Limit = 10,
    threshold: Threshold = None,
) -> SearchResponse:
    """Nearest messages to a stored message; a high threshold finds near-duplicates."""
    return await _similar(state, session, MESSAGES, message_id, limit, threshold)


@router.get("/atoms/{atom_id}/similar", summary="Atoms similar to an atom")
async def similar_atoms(
    atom_id: uuid.UUID,
    state: StateDep,
    session: ReadSessionDep,
    limit: Limit = 10,
    threshold: Threshold = None,
) -> SearchResponse:
    """Nearest atoms to a stored atom; a high threshold finds near-duplicates."""
    return await _similar(state, session, ATOMS, atom_id, limit, threshold)
