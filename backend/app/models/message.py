"""A chat message, the raw material of knowledge."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, Column, Computed, DateTime, Index, Text, text
from sqlmodel import Field

from app.core.enums import ExtractionStatus
from app.models.base import (
    HNSW_PARAMS,
    TEXT_HASH_FUNCTION,
    EmbeddedMixin,
    created_at_field,
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
        # The durable queue: rows whose embedding is missing or was made for another text.
        Index(
            "ix_messages_embedding_pending",
            "id",
            postgresql_where=text("embedding_content_hash IS DISTINCT FROM content_hash"),
        ),
        Index(
            "ix_messages_fts_simple",
            text("to_tsvector('simple'::regconfig, content)"),
            postgresql_using="gin",
        ),
        Index(
            "ix_messages_fts_english",
            text("to_tsvector('english'::regconfig, content)"),
            postgresql_using="gin",
        ),
        Index(
            "messages_embedding_hnsw_idx",
            "embedding",
            postgresql_using="hnsw",
            postgresql_with=HNSW_PARAMS,
            postgresql_ops={"embedding": "vector_cosine_ops"},
        ),
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
