"""embedding leases: who is embedding a row and until when

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

A worker claims rows in one short statement (claimed_by, claim_expires_at), calls the
provider with no transaction open, and writes behind the content hash and its lease. A lease
that expires makes the rows claimable again. No row lock outlives a statement.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("messages", "atoms")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("embedding_claimed_by", sa.Text(), nullable=True))
        op.add_column(
            table,
            sa.Column("embedding_claim_expires_at", sa.DateTime(timezone=True), nullable=True),
        )


def downgrade() -> None:
    for table in TABLES:
        op.drop_column(table, "embedding_claim_expires_at")
        op.drop_column(table, "embedding_claimed_by")
