"""An atom of knowledge (a problem, a decision...) and its links to topics and messages."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, Column, Computed, Float, ForeignKey, Text
from sqlmodel import Field, SQLModel

from app.core.enums import AtomType
from app.models.base import (
    TEXT_HASH_FUNCTION,
    EmbeddedMixin,
    created_at_field,
    embedding_indexes,
    updated_at_field,
    uuid_pk,
)

ATOM_TYPES_SQL = ", ".join(f"'{t.value}'" for t in AtomType)
# Title and content, separated by a blank line: what an atom embeds.
ATOM_TEXT_SQL = "title || E'\\n\\n' || content"
# Full-text matching needs no separator beyond a space; written as Postgres prints it back,
# so autogenerate sees no drift.
ATOM_FTS_SQL = "(title || ' '::text) || content"


class Atom(EmbeddedMixin, table=True):
    __tablename__ = "atoms"
    __table_args__ = (
        CheckConstraint(f"type IN ({ATOM_TYPES_SQL})", name="type"),
        CheckConstraint("confidence >= 0 AND confidence <= 1", name="confidence"),
        *embedding_indexes("atoms", ATOM_FTS_SQL),
    )

    id: uuid.UUID = uuid_pk()
    type: str = Field(sa_type=Text, index=True)
    title: str = Field(sa_type=Text)
    content: str = Field(sa_type=Text)
    confidence: float = Field(default=0.5, sa_type=Float)
    # What makes re-extraction idempotent: the same atom from the same sources is one row.
    fingerprint: str = Field(sa_type=Text, unique=True)
    content_hash: str | None = Field(
        default=None,
        sa_column=Column(Text, Computed(f"{TEXT_HASH_FUNCTION}({ATOM_TEXT_SQL})", persisted=True)),
    )
    created_at: datetime = created_at_field()
    updated_at: datetime = updated_at_field()


class AtomMessage(SQLModel, table=True):
    """Provenance: an atom came from these messages."""

    __tablename__ = "atom_messages"

    atom_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("atoms.id", ondelete="CASCADE"), primary_key=True)
    )
    message_id: uuid.UUID = Field(
        sa_column=Column(
            ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True, index=True
        )
    )


def atom_text(title: str, content: str) -> str:
    """The text an atom embeds (mirrors ATOM_TEXT_SQL)."""
    return f"{title}\n\n{content}"
