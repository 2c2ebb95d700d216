"""add_vector_indexes: HNSW (cosine) on messages.embedding and atoms.embedding, CONCURRENTLY

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

Safe to run on a live table and to run again:
- CREATE INDEX CONCURRENTLY runs outside a transaction (autocommit block), online and in the
  `--sql` output (which pipes through psql as printed: `\\gexec` runs the conditional DROPs);
- an index left INVALID by an interrupted build, or one whose definition differs (method,
  opclass, m, ef_construction), is dropped CONCURRENTLY and built again; a right one is kept.
  env.py runs the same check after every online `upgrade` at or past this revision, so an
  index broken later is repaired by the next `alembic upgrade head`;
- pgvector must be >= 0.5.0, checked before anything is touched;
- maintenance_work_mem, parallel maintenance workers and lock_timeout are set for this session
  only, and online the build raises maintenance_work_mem to what the HNSW graph needs (up to
  INDEX_MAINTENANCE_WORK_MEM_MAX) and shows its progress from pg_stat_progress_create_index
  (app/indexes/build.py). The migration's connection has no client-side statement timeout.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import sqlalchemy as sa

from alembic import context, op
from app.core.config import get_settings
from app.indexes.build import BuildOptions, IndexBuilder
from app.indexes.catalog import (
    VECTOR_INDEXES,
    VECTOR_VERSION_CHECK_SQL,
    build_session_sql,
    ensure_vector_indexes,
)
from app.indexes.progress import make_reporter

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def session_sql() -> list[str]:
    settings = get_settings()
    return build_session_sql(
        settings.index_maintenance_work_mem,
        settings.index_parallel_workers,
        settings.index_lock_timeout,
    )


def _execute(statement: str) -> list[str]:
    if context.is_offline_mode():
        if statement.startswith("SELECT"):
            # psql runs each row of the SELECT as a statement: the DROP only when needed.
            context.get_context().impl.static_output(f"{statement} \\gexec\n")
        else:
            op.execute(statement)
        return []
    result = op.get_bind().execute(sa.text(statement))
    return [str(row[0]) for row in result] if result.returns_rows else []


def upgrade() -> None:
    op.execute(VECTOR_VERSION_CHECK_SQL)
    with op.get_context().autocommit_block():
        if context.is_offline_mode():
            ensure_vector_indexes(_execute, session_sql())
            return
        # online: the memory check, progress from pg_stat_progress_create_index, one-line errors
        options = BuildOptions.from_settings(get_settings())
        IndexBuilder(op.get_bind(), options, make_reporter(sys.stderr)).ensure()


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for index in VECTOR_INDEXES:
            op.execute(index.drop_sql)
