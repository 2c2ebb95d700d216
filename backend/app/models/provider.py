"""A configured LLM provider: where embeddings (and chat) come from."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, Index, Integer, Text, text
from sqlmodel import Field, SQLModel

from app.models.base import created_at_field, updated_at_field, uuid_pk


class LLMProvider(SQLModel, table=True):
    __tablename__ = "llm_providers"
    __table_args__ = (
        CheckConstraint("type IN ('openai', 'ollama', 'local')", name="type"),
        CheckConstraint("embedding_dimensions > 0", name="embedding_dimensions"),
        Index(
            "uq_llm_providers_default",
            "is_default",
            unique=True,
            postgresql_where=text("is_default"),
        ),
    )

    id: uuid.UUID = uuid_pk()
    name: str = Field(sa_type=Text, unique=True)
    type: str = Field(sa_type=Text)
    base_url: str | None = Field(default=None, sa_type=Text)
    # Fernet token; the plain key never reaches the database.
    api_key_encrypted: str | None = Field(default=None, sa_type=Text)
    embedding_model: str = Field(sa_type=Text)
    embedding_dimensions: int = Field(sa_type=Integer)
    chat_model: str | None = Field(default=None, sa_type=Text)
    is_active: bool = Field(
        default=True, sa_type=Boolean, sa_column_kwargs={"server_default": "true"}
    )
    is_default: bool = Field(
        default=False, sa_type=Boolean, sa_column_kwargs={"server_default": "false"}
    )
    created_at: datetime = created_at_field()
    updated_at: datetime = updated_at_field()
