"""Knowledge extraction, queued."""

from __future__ import annotations

import logging
import uuid

from fastapi import APIRouter, status
from taskiq import AsyncBroker

from app.api.deps import SessionDep, StateDep, rate_limit
from app.api.limits import RATE_LIMIT_RESPONSES, RouteGroup
from app.auth.dependencies import AUTH_RESPONSES, WriteAccess
from app.broker import kicker
from app.core.errors import ValidationError
from app.embedding import provider_service
from app.embedding.dependencies import RegistryDep
from app.embedding.schemas import ExtractRequest, ExtractResponse
from app.embedding.spaces import space_for_provider
from app.knowledge import extraction_service
from app.knowledge.tasks import extract_knowledge_from_messages_task

router = APIRouter(
    prefix="/knowledge",
    tags=["knowledge"],
    dependencies=[WriteAccess, rate_limit(RouteGroup.extract, WriteAccess)],
    responses=AUTH_RESPONSES | RATE_LIMIT_RESPONSES,
)
logger = logging.getLogger(__name__)


@router.post("/extract", status_code=status.HTTP_202_ACCEPTED, summary="Queue knowledge extraction")
async def extract(
    body: ExtractRequest, state: StateDep, registry: RegistryDep, session: SessionDep
) -> ExtractResponse:
    """Queue extraction over the given messages (or every pending one), in windows.

    The messages queued are marked `processing` until their task is done or has failed, so a
    repeated `all_pending` call does not queue them again (a claim older than
    EXTRACTION_REQUEUE_SECONDS counts as pending again)."""
    if not body.message_ids and not body.all_pending:
        raise ValidationError("give message_ids or set all_pending")
    if body.provider_id is not None:
        # Only the active or a switch's target provider: no third model's vectors in a column.
        await provider_service.resolve_spec(session, body.provider_id, state.settings)
        spaces = await registry.book.spaces(session)
        for entity in ("messages", "atoms"):
            space_for_provider(spaces, entity, body.provider_id)
    ids = list(dict.fromkeys(body.message_ids))
    await extraction_service.claim(session, ids)
    if body.all_pending:
        claimed = await extraction_service.claim_pending(
            session, limit=100_000, stale_seconds=state.settings.extraction_requeue_seconds
        )
        given = set(ids)
        ids += [i for i in claimed if i not in given]
    await session.commit()  # the claims are visible before any task runs
    windows = [ids[i : i + body.window] for i in range(0, len(ids), body.window)]
    provider = str(body.provider_id) if body.provider_id else None
    queued = await _queue(state.broker, windows, provider)
    if queued < len(windows):
        await extraction_service.release(session, [i for w in windows[queued:] for i in w])
        await session.commit()
        return ExtractResponse(messages=len(ids), tasks=queued, status="failed_to_queue")
    return ExtractResponse(messages=len(ids), tasks=len(windows), status="queued")


async def _queue(via: AsyncBroker, windows: list[list[uuid.UUID]], provider: str | None) -> int:
    """Publish one task per window; how many were published before the broker failed."""
    task = kicker(extract_knowledge_from_messages_task, via)
    for done, window in enumerate(windows):
        try:
            await task.kiq([str(i) for i in window], provider)
        except Exception as exc:  # noqa: BLE001 - answer, do not crash, when the broker is down
            logger.warning("could not queue extraction: %s", exc)
            return done
    return len(windows)
