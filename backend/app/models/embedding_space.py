"""Embedding spaces: which model's vectors an entity's columns hold, and the config version.

A space is a model (provider, model name, dimensions, storage type) and the column and HNSW
index that hold its vectors. Per entity one space is `active` (the one search reads; its
column and index carry the seed's names), at most one is a switch's `target` (columns with
`_next`), at most one the `previous`, kept for rollback after a cutover (`_prev`); `retired`
rows are history. `embedding_config.version` is raised by a trigger on every change of
llm_providers or embedding_spaces: processes compare it to what they cached.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, DateTime, Index, Integer, Text, func, text
from sqlmodel import Field, SQLModel

from app.models.base import created_at_field

SPACE_STATES = ("active", "target", "previous", "retired")
STORAGE_TYPES = ("vector", "halfvec")
SLOT_SUFFIX = {"active": "", "target": "_next", "previous": "_prev"}


class EmbeddingSpace(SQLModel, table=True):
    __tablename__ = "embedding_spaces"
    __table_args__ = (
        CheckConstraint("entity IN ('messages', 'atoms')", name="entity"),
        CheckConstraint("state IN ('active', 'target', 'previous', 'retired')", name="state"),
        CheckConstraint("storage IN ('vector', 'halfvec')", name="storage"),
        CheckConstraint("dimensions > 0", name="dimensions"),
        # One active, one target and one previous space per entity at most.
        Index(
            "uq_embedding_spaces_live",
            "entity",
            "state",
            unique=True,
            postgresql_where=text("state <> 'retired'"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    entity: str = Field(sa_type=Text)
    state: str = Field(sa_type=Text)
    # For a target: filling, indexing, ready. None otherwise.
    phase: str | None = Field(default=None, sa_type=Text)
    provider_id: uuid.UUID | None = Field(default=None)
    provider_name: str = Field(sa_type=Text)
    provider_type: str = Field(sa_type=Text)
    model: str = Field(sa_type=Text)
    dimensions: int = Field(sa_type=Integer)
    storage: str = Field(default="vector", sa_type=Text)
    column_name: str = Field(sa_type=Text)
    index_name: str = Field(sa_type=Text)
    created_at: datetime = created_at_field()
    activated_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    retired_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class EmbeddingConfig(SQLModel, table=True):
    """One row: the version every process compares with what it cached."""

    __tablename__ = "embedding_config"
    __table_args__ = (CheckConstraint("id = 1", name="one_row"),)

    id: int = Field(default=1, primary_key=True)
    version: int = Field(
        default=0, sa_type=BigInteger, sa_column_kwargs={"server_default": "0", "nullable": False}
    )
    changed_at: datetime = Field(
        default=None,
        sa_type=DateTime(timezone=True),
        sa_column_kwargs={"server_default": func.now(), "nullable": False},
    )
