"""Embedding spaces over the API: list them; switch, cut over, roll back, finish (admin)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, status
from sqlalchemy.ext.asyncio import AsyncEngine

from app.api.deps import StateDep
from app.auth.dependencies import AUTH_RESPONSES, AdminAccess, SearchAccess
from app.core.config import Settings
from app.embedding import switch as embedding_switch
from app.embedding import switch_runner as embedding_switch_runner
from app.embedding.dependencies import RegistryDep
from app.embedding.queue import forget_spaces
from app.embedding.schemas import CutoverRequest, SwitchRequest, SwitchResponse
from app.embedding.status import SpaceCoverage
from app.embedding.tasks import enqueuer

router = APIRouter(prefix="/embeddings", tags=["embedding spaces"], responses=AUTH_RESPONSES)
logger = logging.getLogger(__name__)


async def _changed(state: StateDep, registry: RegistryDep) -> list[SpaceCoverage]:
    """This process reads the spaces it just changed at once (others within seconds)."""
    forget_spaces()
    await registry.forget(None)
    return await _spaces(state.engine, state.settings)


async def _spaces(engine: AsyncEngine, settings: Settings) -> list[SpaceCoverage]:
    rows = await embedding_switch_runner.coverage(engine, settings)
    return rows


@router.get("/spaces", summary="Embedding spaces", dependencies=[SearchAccess])
async def list_spaces(state: StateDep) -> list[SpaceCoverage]:
    """Each entity's active space, a switch's target and the previous one: coverage, rate, ETA."""
    return await _spaces(state.engine, state.settings)


@router.post(
    "/switch",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Start (or resume) a switch to another model",
    dependencies=[AdminAccess],
)
async def switch(body: SwitchRequest, state: StateDep, registry: RegistryDep) -> SwitchResponse:
    """Probe the provider, add the target columns and queue the fill to the workers.
    Called again it resumes (queues what is left). `POST /embeddings/cutover` follows."""
    async with state.engine.connect() as conn:
        target = await embedding_switch.resolve_target(
            conn, state.settings, body.provider, body.storage
        )
    spaces, queued = await embedding_switch_runner.begin(
        state.engine, state.settings, target, enqueuer(None, state.broker)
    )
    message = f"switch to {spaces[0].describe()}: queued " + ", ".join(
        f"{name} {count}" for name, count in queued.items()
    )
    return SwitchResponse(message=message, spaces=await _changed(state, registry))


@router.post(
    "/cutover",
    summary="Make the target the active space",
    dependencies=[AdminAccess],
    responses={409: {"description": "No switch, the target's indexes not built, or rows left"}},
)
async def cutover(body: CutoverRequest, state: StateDep, registry: RegistryDep) -> SwitchResponse:
    """Renames the columns in one short transaction. Never builds an index (minutes at size: a
    request that times out): 409 naming the command that builds them while the target's HNSW or
    pending-work index is not valid (`tasktracker embeddings switch --provider NAME --wait`),
    and 409 below 100% coverage unless `force`."""
    spaces = await embedding_switch.cutover(
        state.engine, force=body.force, max_attempts=state.settings.embedding_max_attempts
    )
    active = next(s for s in spaces if s.state == "active")
    return SwitchResponse(
        message=f"cut over: {active.describe()} is active",
        spaces=await _changed(state, registry),
    )


@router.post("/rollback", summary="Restore the previous space", dependencies=[AdminAccess])
async def rollback(state: StateDep, registry: RegistryDep) -> SwitchResponse:
    """After a cutover: the previous space active again. Before one: the switch abandoned."""
    message = await embedding_switch.rollback(state.engine)
    return SwitchResponse(message=message, spaces=await _changed(state, registry))


@router.post("/finish", summary="Drop the previous space", dependencies=[AdminAccess])
async def finish(state: StateDep, registry: RegistryDep) -> SwitchResponse:
    """Drop the previous space's column and index: the switch is over."""
    message = await embedding_switch.finish(state.engine)
    return SwitchResponse(message=message, spaces=await _changed(state, registry))
