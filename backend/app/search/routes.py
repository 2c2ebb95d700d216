"""Semantic search over messages and atoms, and similar items."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.api.deps import SearchSessionDep, StateDep, rate_limit
from app.api.limits import RATE_LIMIT_RESPONSES, RouteGroup
from app.auth.dependencies import AUTH_RESPONSES, SearchAccess
from app.core.metrics import observe_search
from app.embedding.dependencies import RegistryDep
from app.embedding.entities import ATOMS, MESSAGES, Entity
from app.search import semantic_search_service as search
from app.search.schemas import (
    AtomSearchRequest,
    MessageSearchRequest,
    SearchHitOut,
    SearchRequest,
    SearchResponse,
)

router = APIRouter(
    prefix="/semantic_search",
    tags=["semantic search"],
    dependencies=[SearchAccess, rate_limit(RouteGroup.search, SearchAccess)],
    responses=AUTH_RESPONSES | RATE_LIMIT_RESPONSES,
)


def _response(query: str, page: search.SearchPage, started: float) -> SearchResponse:
    return SearchResponse(
        query=query,
        embedding_model=page.model,
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
    registry: RegistryDep,
    session: SearchSessionDep,
    entity: Entity,
    body: SearchRequest,
    filters: search.SearchFilters,
) -> SearchResponse:
    started = time.perf_counter()
    query = search.TextQuery(
        body.query, body.limit, body.offset, body.threshold, filters, body.mode
    )
    with observe_search(entity.name, body.mode):
        tuning = search.SearchTuning.from_settings(state.settings)
        page = await search.search_text(session, registry, entity, query, tuning)
    await session.commit()
    return _response(body.query, page, started)


@router.post("/messages", summary="Search messages by meaning")
async def search_messages(
    body: MessageSearchRequest, state: StateDep, registry: RegistryDep, session: SearchSessionDep
) -> SearchResponse:
    """Messages nearest to the query (cosine, HNSW); `mode=hybrid` adds full-text matches."""
    filters = search.SearchFilters(
        channel=body.channel,
        author=body.author,
        sent_after=body.sent_after,
        sent_before=body.sent_before,
    )
    return await _search(state, registry, session, MESSAGES, body, filters)


@router.post("/atoms", summary="Search atoms by meaning")
async def search_atoms(
    body: AtomSearchRequest, state: StateDep, registry: RegistryDep, session: SearchSessionDep
) -> SearchResponse:
    """Atoms nearest to the query, optionally of some types or one topic."""
    filters = search.SearchFilters(
        atom_types=tuple(t.value for t in body.types), topic_id=body.topic_id
    )
    return await _search(state, registry, session, ATOMS, body, filters)


async def _similar(
    state: StateDep,
    registry: RegistryDep,
    session: SearchSessionDep,
    entity: Entity,
    row_id: uuid.UUID,
    limit: int,
    threshold: float | None,
) -> SearchResponse:
    started = time.perf_counter()
    with observe_search(entity.name, "similar"):
        tuning = search.SearchTuning.from_settings(state.settings)
        page = await search.similar_to(
            session,
            entity,
            row_id,
            limit=limit,
            threshold=threshold,
            tuning=tuning,
            registry=registry,
        )
    await session.commit()
    return _response(str(row_id), page, started)


Limit = Annotated[int, Query(ge=1, le=100)]
Threshold = Annotated[
    float | None, Query(ge=-1.0, le=1.0, description="e.g. 0.95 for near-duplicates")
]


@router.get("/messages/{message_id}/similar", summary="Messages similar to a message")
async def similar_messages(
    message_id: uuid.UUID,
    state: StateDep,
    registry: RegistryDep,
    session: SearchSessionDep,
    limit: Limit = 10,
    threshold: Threshold = None,
) -> SearchResponse:
    """Nearest messages to a stored message; a high threshold finds near-duplicates."""
    return await _similar(state, registry, session, MESSAGES, message_id, limit, threshold)


@router.get("/atoms/{atom_id}/similar", summary="Atoms similar to an atom")
async def similar_atoms(
    atom_id: uuid.UUID,
    state: StateDep,
    registry: RegistryDep,
    session: SearchSessionDep,
    limit: Limit = 10,
    threshold: Threshold = None,
) -> SearchResponse:
    """Nearest atoms to a stored atom; a high threshold finds near-duplicates."""
    return await _similar(state, registry, session, ATOMS, atom_id, limit, threshold)
