"""A chat message, the raw material of knowledge."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, Column, Computed, DateTime, Index, Text
from sqlmodel import Field

from app.core.enums import ExtractionStatus
from app.models.base import (
    TEXT_HASH_FUNCTION,
    EmbeddedMixin,
    created_at_field,
    embedding_indexes,
    updated_at_field,
    uuid_pk,
)

MESSAGE_TEXT_SQL = "content"


class Message(EmbeddedMixin, table=True):
    __tablename__ = "messages"
    __table_args__ = (
        CheckConstraint(
            "extraction_status IN ('pending', 'processing', 'done', 'failed')",
            name="extraction_status",
        ),
        Index("ix_messages_channel_sent_at", "channel", "sent_at"),
        Index("ix_messages_sent_at", "sent_at"),
        *embedding_indexes("messages", MESSAGE_TEXT_SQL),
    )

    id: uuid.UUID = uuid_pk()
    external_id: str | None = Field(default=None, sa_type=Text, unique=True)
    author: str = Field(sa_type=Text)
    channel: str = Field(sa_type=Text)
    content: str = Field(sa_type=Text)
    sent_at: datetime = Field(sa_type=DateTime(timezone=True))
    extraction_status: str = Field(
        default=ExtractionStatus.pending.value,
        sa_type=Text,
        sa_column_kwargs={"server_default": ExtractionStatus.pending.value},
    )
    extraction_error: str | None = Field(default=None, sa_type=Text)
    extracted_at: datetime | None = Field(
        default=None,
        sa_type=DateTime(timezone=True),
    )
    content_hash: str | None = Field(
        default=None,
        sa_column=Column(
            Text, Computed(f"{TEXT_HASH_FUNCTION}({MESSAGE_TEXT_SQL})", persisted=True)
        ),
    )
    created_at: datetime = created_at_field()
    updated_at: datetime = updated_at_field()


def message_text(content: str) -> str:
    """The text a message embeds (mirrors MESSAGE_TEXT_SQL)."""
    return content
