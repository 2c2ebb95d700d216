"""Messages: ingest (which queues embeddings), list, read, update."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, status

from app.api.deps import SessionDep, StateDep
from app.auth.dependencies import AUTH_RESPONSES, SearchAccess, WriteAccess
from app.embedding.entities import MESSAGES
from app.embedding.queue import publish
from app.embedding.tasks import enqueuer
from app.messages import service as message_service
from app.messages.schemas import (
    MessageBatchIn,
    MessageIn,
    MessageOut,
    MessagePage,
    MessagesCreated,
    MessageUpdate,
)
from app.models.message import Message
from app.schemas.common import NoNul

router = APIRouter(prefix="/messages", tags=["messages"], responses=AUTH_RESPONSES)


def message_out(message: Message) -> MessageOut:
    out = MessageOut.model_validate(message)
    out.embedded = message.embedding is not None
    out.embedding_current = out.embedded and message.embedding_content_hash == message.content_hash
    return out


async def _ingest(state: StateDep, session: SessionDep, items: list[MessageIn]) -> MessagesCreated:
    ids = await message_service.create_messages(session, [item.model_dump() for item in items])
    await session.commit()  # visible before any worker looks for them
    _, failed = await publish(
        state.engine,
        enqueuer(None, state.broker),
        MESSAGES,
        ids,
        batch_size=state.settings.task_batch_size,
    )
    return MessagesCreated(
        ids=ids,
        created=len(ids),
        duplicates=len(items) - len(ids),
        embedding="pending" if failed else "queued",
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Ingest one message",
    dependencies=[WriteAccess],
)
async def create_message(body: MessageIn, state: StateDep, session: SessionDep) -> MessagesCreated:
    """Store a message and queue its embedding (a known external_id is not stored twice)."""
    return await _ingest(state, session, [body])


@router.post(
    "/batch",
    status_code=status.HTTP_201_CREATED,
    summary="Import messages in bulk",
    dependencies=[WriteAccess],
)
async def import_messages(
    body: MessageBatchIn, state: StateDep, session: SessionDep
) -> MessagesCreated:
    """Store up to 1,000 messages in one statement and queue their embeddings."""
    return await _ingest(state, session, body.messages)


@router.get("", summary="List messages", dependencies=[SearchAccess])
async def list_messages(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    after: uuid.UUID | None = None,
    channel: Annotated[NoNul | None, Query(max_length=100)] = None,
) -> MessagePage:
    """A keyset page ordered by id; pass `next_after` as `after` for the next page."""
    rows = await message_service.list_messages(session, limit=limit, after=after, channel=channel)
    return MessagePage(
        items=[message_out(m) for m in rows], next_after=rows[-1].id if len(rows) == limit else None
    )


@router.get("/{message_id}", summary="Read a message", dependencies=[SearchAccess])
async def get_message(message_id: uuid.UUID, session: SessionDep) -> MessageOut:
    """One message with its embedding state."""
    return message_out(await message_service.get_message(session, message_id))


@router.patch("/{message_id}", summary="Update a message", dependencies=[WriteAccess])
async def update_message(
    message_id: uuid.UUID, body: MessageUpdate, state: StateDep, session: SessionDep
) -> MessageOut:
    """Edit a message; a new content is re-embedded, other fields are not."""
    message, content_changed = await message_service.update_message(
        session, message_id, body.model_dump(exclude_unset=True)
    )
    await session.commit()
    if content_changed:
        await publish(
            state.engine, enqueuer(None, state.broker), MESSAGES, [message_id], batch_size=1
        )
    return message_out(message)
