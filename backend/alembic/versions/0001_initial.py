"""initial: the vector extension, the text-hash function and the tables

Revision ID: 0001
Revises:
Create Date: 2026-11-25

The embedding columns are vector(N) with N = EMBEDDING_DIMENSIONS when this revision runs.
The vector indexes come in 0002_add_vector_indexes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from pgvector.sqlalchemy import Vector

from alembic import op
from app.core.config import get_settings
from app.core.enums import AtomType

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ATOM_TEXT = "title || E'\\n\\n' || content"
PENDING = sa.text("embedding_content_hash IS DISTINCT FROM content_hash")
# Declared IMMUTABLE so generated columns can use it; the database encoding is fixed.
TEXT_HASH_FUNCTION = """
CREATE OR REPLACE FUNCTION tt_text_hash(t text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN encode(sha256(convert_to(t, 'UTF8')), 'hex')
"""


def _embedding_columns(dims: int) -> list[sa.Column[object]]:
    return [
        sa.Column("embedding", Vector(dims), nullable=True),
        sa.Column("embedding_model", sa.Text(), nullable=True),
        sa.Column("embedded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("embedding_content_hash", sa.Text(), nullable=True),
        sa.Column("embedding_error", sa.Text(), nullable=True),
        sa.Column("embedding_queued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("embedding_attempts", sa.Integer(), server_default="0", nullable=False),
    ]


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    ]


def _fts_indexes(table: str, expression: str) -> None:
    for config in ("simple", "english"):
        op.create_index(
            f"ix_{table}_fts_{config}",
            table,
            [sa.literal_column(f"to_tsvector('{config}'::regconfig, {expression})")],
            postgresql_using="gin",
        )


def _create_messages(dims: int) -> None:
    op.create_table(
        "messages",
        *_embedding_columns(dims),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("external_id", sa.Text(), nullable=True),
        sa.Column("author", sa.Text(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("extraction_status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("extraction_error", sa.Text(), nullable=True),
        sa.Column("extracted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("content_hash", sa.Text(), sa.Computed("tt_text_hash(content)", persisted=True)),
        *_timestamps(),
        sa.CheckConstraint(
            "extraction_status IN ('pending', 'processing', 'done', 'failed')",
            name=op.f("ck_messages_extraction_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
        sa.UniqueConstraint("external_id", name=op.f("uq_messages_external_id")),
    )
    op.create_index("ix_messages_channel_sent_at", "messages", ["channel", "sent_at"])
    op.create_index("ix_messages_sent_at", "messages", ["sent_at"])
    op.create_index("ix_messages_embedding_pending", "messages", ["id"], postgresql_where=PENDING)
    _fts_indexes("messages", "content")


def _create_atoms(dims: int) -> None:
    types = ", ".join(f"'{t.value}'" for t in AtomType)
    op.create_table(
        "atoms",
        *_embedding_columns(dims),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("fingerprint", sa.Text(), nullable=False),
        sa.Column(
            "content_hash", sa.Text(), sa.Computed(f"tt_text_hash({ATOM_TEXT})", persisted=True)
        ),
        *_timestamps(),
        sa.CheckConstraint(f"type IN ({types})", name=op.f("ck_atoms_type")),
        sa.CheckConstraint("confidence >= 0 AND confidence <= 1", name=op.f("ck_atoms_confidence")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_atoms")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_atoms_fingerprint")),
    )
    op.create_index("ix_atoms_type", "atoms", ["type"])
    op.create_index("ix_atoms_embedding_pending", "atoms", ["id"], postgresql_where=PENDING)
    _fts_indexes("atoms", "(title || ' '::text) || content")


def _create_providers() -> None:
    op.create_table(
        "llm_providers",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("base_url", sa.Text(), nullable=True),
        sa.Column("api_key_encrypted", sa.Text(), nullable=True),
        sa.Column("embedding_model", sa.Text(), nullable=False),
        sa.Column("embedding_dimensions", sa.Integer(), nullable=False),
        sa.Column("chat_model", sa.Text(), nullable=True),
        sa.Column("is_active", sa.Boolean(), server_default="true", nullable=False),
        sa.Column("is_default", sa.Boolean(), server_default="false", nullable=False),
        *_timestamps(),
        sa.CheckConstraint(
            "type IN ('openai', 'ollama', 'local')", name=op.f("ck_llm_providers_type")
        ),
        sa.CheckConstraint(
            "embedding_dimensions > 0", name=op.f("ck_llm_providers_embedding_dimensions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_llm_providers")),
        sa.UniqueConstraint("name", name=op.f("uq_llm_providers_name")),
    )
    op.create_index(
        "uq_llm_providers_default",
        "llm_providers",
        ["is_default"],
        unique=True,
        postgresql_where=sa.text("is_default"),
    )


def _create_links() -> None:
    op.create_table(
        "topics",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_topics")),
        sa.UniqueConstraint("name", name=op.f("uq_topics_name")),
    )
    for table, left, right in (
        ("atom_messages", "atoms", "messages"),
        ("topic_atoms", "topics", "atoms"),
    ):
        left_col, right_col = f"{left[:-1]}_id", f"{right[:-1]}_id"
        op.create_table(
            table,
            sa.Column(left_col, sa.Uuid(), nullable=False),
            sa.Column(right_col, sa.Uuid(), nullable=False),
            sa.ForeignKeyConstraint(
                [left_col],
                [f"{left}.id"],
                name=op.f(f"fk_{table}_{left_col}_{left}"),
                ondelete="CASCADE",
            ),
            sa.ForeignKeyConstraint(
                [right_col],
                [f"{right}.id"],
                name=op.f(f"fk_{table}_{right_col}_{right}"),
                ondelete="CASCADE",
            ),
            sa.PrimaryKeyConstraint(left_col, right_col, name=op.f(f"pk_{table}")),
        )
        op.create_index(op.f(f"ix_{table}_{right_col}"), table, [right_col])


def upgrade() -> None:
    dims = get_settings().embedding_dimensions
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute(TEXT_HASH_FUNCTION)
    _create_messages(dims)
    _create_atoms(dims)
    _create_providers()
    _create_links()


def downgrade() -> None:
    for table in ("topic_atoms", "atom_messages", "topics", "llm_providers", "atoms", "messages"):
        op.drop_table(table)
    op.execute("DROP FUNCTION IF EXISTS tt_text_hash(text)")
