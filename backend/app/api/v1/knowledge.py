"""Knowledge extraction, queued."""

from __future__ import annotations

import logging

from fastapi import APIRouter, status
from sqlalchemy import text

from app.api.auth import AUTH_RESPONSES, WriteAccess
from app.api.deps import SessionDep
from app.api.limits import RATE_LIMIT_RESPONSES, RouteGroup, rate_limit
from app.core.errors import ValidationError
from app.schemas.embeddings import ExtractRequest, ExtractResponse
from app.tasks.knowledge_tasks import extract_knowledge_from_messages_task

router = APIRouter(
    prefix="/knowledge",
    tags=["knowledge"],
    dependencies=[WriteAccess, rate_limit(RouteGroup.extract, WriteAccess)],
    responses=AUTH_RESPONSES | RATE_LIMIT_RESPONSES,
)
logger = logging.getLogger(__name__)


@router.post("/extract", status_code=status.HTTP_202_ACCEPTED, summary="Queue knowledge extraction")
async def extract(body: ExtractRequest, session: SessionDep) -> ExtractResponse:
    """Queue extraction over the given messages (or every pending one), in windows."""
    if not body.message_ids and not body.all_pending:
        raise ValidationError("give message_ids or set all_pending")
    ids = [str(i) for i in body.message_ids]
    if body.all_pending:
        rows = await session.execute(
            text(
                "SELECT id FROM messages WHERE extraction_status = 'pending' ORDER BY sent_at, id LIMIT 100000"
            )
        )
        ids += [str(i) for i in rows.scalars()]
    windows = [ids[i : i + body.window] for i in range(0, len(ids), body.window)]
    provider = str(body.provider_id) if body.provider_id else None
    try:
        for window in windows:
            await extract_knowledge_from_messages_task.kiq(window, provider)
    except Exception as exc:  # noqa: BLE001 - answer, do not crash, when the broker is down
        logger.warning("could not queue extraction: %s", exc)
        return ExtractResponse(messages=len(ids), tasks=0, status="failed_to_queue")
    return ExtractResponse(messages=len(ids), tasks=len(windows), status="queued")
