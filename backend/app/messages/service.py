"""Messages: ingest (single and batch), list, read, update. Content edits make embeddings stale."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.core.errors import NotFoundError
from app.models.message import Message

EDITABLE = ("author", "channel", "content", "extraction_status")


async def create_messages(
    session: AsyncSession, items: Sequence[dict[str, Any]]
) -> list[uuid.UUID]:
    """Insert messages in one statement; an existing external_id is left as it is (idempotent import)."""
    rows = [
        {
            "id": uuid.uuid4(),
            "external_id": item.get("external_id"),
            "author": item["author"],
            "channel": item["channel"],
            "content": item["content"],
            "sent_at": item.get("sent_at") or datetime.now(UTC),
        }
        for item in items
    ]
    statement = insert(Message).values(rows).on_conflict_do_nothing(index_elements=["external_id"])
    inserted = await session.execute(statement.returning(col(Message.id)))
    return list(inserted.scalars())


async def get_message(session: AsyncSession, message_id: uuid.UUID) -> Message:
    """One message or NotFoundError."""
    message = await session.get(Message, message_id)
    if message is None:
        raise NotFoundError(f"message {message_id} not found")
    return message


async def list_messages(
    session: AsyncSession,
    *,
    limit: int,
    after: uuid.UUID | None = None,
    channel: str | None = None,
) -> list[Message]:
    """A keyset page of messages ordered by id."""
    query = select(Message).order_by(col(Message.id)).limit(limit)
    if after is not None:
        query = query.where(col(Message.id) > after)
    if channel is not None:
        query = query.where(col(Message.channel) == channel)
    return list((await session.execute(query)).scalars())


async def update_message(
    session: AsyncSession, message_id: uuid.UUID, changes: dict[str, Any]
) -> tuple[Message, bool]:
    """Apply changes; returns (message, content_changed). A new text gets fresh embedding attempts."""
    message = await get_message(session, message_id)
    content_changed = "content" in changes and changes["content"] != message.content
    for key in EDITABLE:
        if key in changes:
            setattr(message, key, changes[key])
    if content_changed:
        message.embedding_attempts = 0
        message.embedding_error = None
    await session.flush()
    await session.refresh(message)
    return message, content_changed
