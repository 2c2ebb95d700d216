"""The embedding pipeline seen and driven by an operator."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter
from sqlalchemy import text

from app.api.deps import SessionDep, StateDep, rate_limit
from app.api.limits import RATE_LIMIT_RESPONSES, RouteGroup
from app.auth.dependencies import AUTH_RESPONSES, SearchAccess, WriteAccess, forbidden
from app.core.errors import AppError, NotFoundError
from app.embedding import provider_service
from app.embedding import status as status_service
from app.embedding.dependencies import RegistryDep
from app.embedding.entities import ATOMS, MESSAGES, Entity
from app.embedding.jobs import DbRetry, EmbedStats, embed_rows
from app.embedding.queue import PendingFilter, needing_embedding, pending_pages, publish
from app.embedding.schemas import (
    EmbeddingStatus,
    EmbedNowResponse,
    EnqueueRequest,
    EnqueueResponse,
    ProviderInfo,
)
from app.embedding.spaces import space_for_provider
from app.embedding.tasks import enqueuer
from app.models.api_token import TokenScope

router = APIRouter(prefix="/embeddings", tags=["embeddings"], responses=AUTH_RESPONSES)
Granted = Annotated[TokenScope, WriteAccess]
EmbedNowLimit = rate_limit(RouteGroup.embed_now, WriteAccess)


@router.get(
    "/status", summary="Coverage, index health and the provider", dependencies=[SearchAccess]
)
async def embedding_status(
    state: StateDep, registry: RegistryDep, session: SessionDep
) -> EmbeddingStatus:
    """Total, embedded, stale, pending and parked rows per entity; HNSW index validity."""
    provider, provider_error = None, None
    try:
        entry = await registry.get(session)
        spec = entry.spec
        provider = ProviderInfo(
            name=spec.name, type=spec.type.value, model=spec.model, dimensions=spec.dimensions
        )
    except AppError as exc:
        provider_error = exc.message
    rows = await status_service.coverage(
        session,
        model=provider.model if provider else None,
        max_attempts=state.settings.embedding_max_attempts,
    )
    indexes = await status_service.index_states(session)
    spaces = await status_service.space_coverage(
        session, max_attempts=state.settings.embedding_max_attempts
    )
    return EmbeddingStatus(
        spaces=spaces,
        coverage=rows,
        indexes=indexes,
        provider=provider,
        provider_error=provider_error,
        memory=await status_service.server_memory(session),
    )


async def _enqueue(
    state: StateDep,
    registry: RegistryDep,
    session: SessionDep,
    entity: Entity,
    body: EnqueueRequest,
    granted: TokenScope,
) -> EnqueueResponse:
    # Queueing every row without a current embedding is a backfill: admin only.
    if body.all_missing and not granted.covers(TokenScope.admin):
        raise forbidden(TokenScope.admin, granted)
    if body.provider_id is not None:
        # Refused here (404 unknown, 422 inactive or not the active or target space's
        # provider), not queued to fail in the worker while the rows wait for the sweeper.
        await provider_service.resolve_spec(session, body.provider_id, state.settings)
        spaces = await registry.book.spaces(session)
        entity = space_for_provider(spaces, entity.name, body.provider_id).slot
    enqueue = enqueuer(None, state.broker)
    batch = state.settings.task_batch_size
    queued = failed = skipped = 0
    if body.all_missing:
        pending = PendingFilter(max_attempts=state.settings.embedding_max_attempts)
        async for ids in pending_pages(state.engine, entity, pending, page_size=batch):
            done, bad = await publish(state.engine, enqueue, entity, ids, batch_size=batch)
            queued, failed = queued + done, failed + len(bad)
            if bad:  # the broker is failing: the other pages wait for the sweeper
                break
    if body.ids:
        todo = await needing_embedding(state.engine, entity, body.ids)
        skipped += len(set(body.ids)) - len(todo)
        done, bad = await publish(state.engine, enqueue, entity, todo, batch_size=batch)
        queued, failed = queued + done, failed + len(bad)
    return EnqueueResponse(queued=queued, failed_to_queue=failed, skipped=skipped)


@router.post("/messages/batch", summary="Queue message embeddings")
async def enqueue_messages(
    granted: Granted,
    body: EnqueueRequest,
    state: StateDep,
    registry: RegistryDep,
    session: SessionDep,
) -> EnqueueResponse:
    """Queue embedding tasks for the given message ids, or (admin) every message needing one."""
    return await _enqueue(state, registry, session, MESSAGES, body, granted)


@router.post("/atoms/batch", summary="Queue atom embeddings")
async def enqueue_atoms(
    granted: Granted,
    body: EnqueueRequest,
    state: StateDep,
    registry: RegistryDep,
    session: SessionDep,
) -> EnqueueResponse:
    """Queue embedding tasks for the given atom ids, or (admin) every atom needing one."""
    return await _enqueue(state, registry, session, ATOMS, body, granted)


async def _embed_now(
    state: StateDep,
    registry: RegistryDep,
    session: SessionDep,
    entity: Entity,
    row_id: uuid.UUID,
) -> EmbedNowResponse:
    found = await session.execute(
        text(f"SELECT 1 FROM {entity.table} WHERE id = :id"), {"id": row_id}
    )
    if found.first() is None:
        raise NotFoundError(f"{entity.name[:-1]} {row_id} not found")
    await registry.sync(session)
    total = EmbedStats()
    # Every space rows are embedded for: the active one, and a switch's target (or previous).
    for space in await registry.book.writable(session, entity.name):
        entry = await registry.for_space(session, space)
        await session.commit()
        stats = await embed_rows(
            state.engine,
            space.slot,
            [row_id],
            entry.service,
            model=entry.spec.model,
            max_attempts=10**6,
            retry=DbRetry(seconds=0),  # a request answers 503 at once rather than wait
        )
        if space.state == "active":
            total = stats
    return EmbedNowResponse(id=row_id, **total.as_dict())


@router.post(
    "/messages/{message_id}",
    summary="Embed one message now",
    dependencies=[WriteAccess, EmbedNowLimit],
    responses=RATE_LIMIT_RESPONSES,
)
async def embed_message_now(
    message_id: uuid.UUID, state: StateDep, registry: RegistryDep, session: SessionDep
) -> EmbedNowResponse:
    """Embed a message in this request (skipped when its embedding is current)."""
    return await _embed_now(state, registry, session, MESSAGES, message_id)


@router.post(
    "/atoms/{atom_id}",
    summary="Embed one atom now",
    dependencies=[WriteAccess, EmbedNowLimit],
    responses=RATE_LIMIT_RESPONSES,
)
async def embed_atom_now(
    atom_id: uuid.UUID, state: StateDep, registry: RegistryDep, session: SessionDep
) -> EmbedNowResponse:
    """Embed an atom in this request (skipped when its embedding is current)."""
    return await _embed_now(state, registry, session, ATOMS, atom_id)
