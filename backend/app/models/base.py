"""Metadata conventions and the columns every embedded entity shares."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pgvector import Vector as PgVector
from pgvector.sqlalchemy import Vector
from sqlalchemy import DateTime, Index, Integer, Text, func, text
from sqlmodel import Field, SQLModel

from app.core.config import get_settings

SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# The SQL expression that hashes the text an entity embeds; the same function is created by
# the initial revision and used by the generated `content_hash` columns.
TEXT_HASH_FUNCTION = "tt_text_hash"


def hnsw_params() -> dict[str, int]:
    """The HNSW graph's build parameters, from INDEX_HNSW_M / INDEX_HNSW_EF_CONSTRUCTION."""
    settings = get_settings()
    return {"m": settings.index_hnsw_m, "ef_construction": settings.index_hnsw_ef_construction}


def hnsw_label(params: dict[str, int]) -> str:
    """How a build note and the messages write a graph's parameters: m=16, ef_construction=64."""
    return ", ".join(f"{key}={value}" for key, value in params.items())


# The pending predicate, the pipeline's definition of work: the vector is missing or was made
# for another text. The partial index ix_<table>_embedding_pending holds exactly these rows, so
# every query of pending rows spells it this way (through app.embedding.entities.NEEDS_TEXT).
EMBEDDING_PENDING = "embedding_content_hash IS DISTINCT FROM content_hash"


class BinaryVector(Vector):
    """pgvector's column type, bound and read through the binary asyncpg codec (no text parsing).

    app.db registers pgvector's asyncpg codec on every connection; this type hands it Vector
    objects (a bare list would be taken by asyncpg for an array) and returns numpy arrays.
    """

    cache_ok = True

    def bind_processor(self, dialect: Any) -> Any:  # noqa: ARG002 - SQLAlchemy signature
        def process(value: Any) -> Any:
            if value is None or isinstance(value, PgVector):
                return value
            return PgVector(np.asarray(value, dtype=np.float32))

        return process

    def result_processor(self, dialect: Any, coltype: Any) -> Any:  # noqa: ARG002
        def process(value: Any) -> Any:
            return value.to_numpy() if isinstance(value, PgVector) else value

        return process


def embedding_indexes(table: str, fts_expression: str) -> tuple[Index, ...]:
    """What every embedded table has: the pending-work index, full-text GIN, and HNSW."""
    fts = [
        Index(
            f"ix_{table}_fts_{config}",
            text(f"to_tsvector('{config}'::regconfig, {fts_expression})"),
            postgresql_using="gin",
        )
        for config in ("simple", "english")
    ]
    return (
        # The durable queue: rows whose embedding is missing or was made for another text.
        Index(
            f"ix_{table}_embedding_pending",
            "id",
            postgresql_where=text(EMBEDDING_PENDING),
        ),
        *fts,
        Index(
            f"{table}_embedding_hnsw_idx",
            "embedding",
            postgresql_using="hnsw",
            postgresql_with=hnsw_params(),
            postgresql_ops={"embedding": "vector_cosine_ops"},
        ),
    )


def utcnow() -> datetime:
    return datetime.now(UTC)


def embedding_dimensions() -> int:
    return get_settings().embedding_dimensions


def uuid_pk() -> Any:
    return Field(default_factory=uuid.uuid4, primary_key=True)


def created_at_field() -> Any:
    return Field(
        default_factory=utcnow,
        sa_type=DateTime(timezone=True),
        sa_column_kwargs={"server_default": func.now(), "nullable": False},
    )


def updated_at_field() -> Any:
    return Field(
        default_factory=utcnow,
        sa_type=DateTime(timezone=True),
        sa_column_kwargs={"server_default": func.now(), "onupdate": utcnow, "nullable": False},
    )


class EmbeddedMixin(SQLModel):
    """The vector and what tells whether it is current: model, time, text hash, last error."""

    embedding: Any | None = Field(default=None, sa_type=BinaryVector(embedding_dimensions()))
    embedding_model: str | None = Field(default=None, sa_type=Text)
    embedded_at: datetime | None = Field(
        default=None,
        sa_type=DateTime(timezone=True),
    )
    embedding_content_hash: str | None = Field(default=None, sa_type=Text)
    embedding_error: str | None = Field(default=None, sa_type=Text)
    # When the row was last put on the queue; the sweeper re-queues only rows queued long ago.
    embedding_queued_at: datetime | None = Field(
        default=None,
        sa_type=DateTime(timezone=True),
    )
    embedding_attempts: int = Field(
        default=0, sa_type=Integer, sa_column_kwargs={"server_default": "0", "nullable": False}
    )
    # The lease of the task embedding the row now (app.embedding.jobs): who, until when.
    embedding_claimed_by: str | None = Field(default=None, sa_type=Text)
    embedding_claim_expires_at: datetime | None = Field(
        default=None,
        sa_type=DateTime(timezone=True),
    )
