"""embedding spaces: the model each entity's vectors come from, and a config version

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

`embedding_spaces` names, per entity, the space search reads (`active`: provider, model,
dimensions, storage type, column and HNSW index), a switch's `target` and the `previous`
space kept for rollback (app.embedding.switch). The active spaces are seeded from
the columns as they are (their dimension and type read from the catalog) and the provider
that fills them: the default provider whose dimension fits, else the one the settings name.
`embedding_config.version` is raised by a statement trigger on llm_providers and
embedding_spaces, so every process sees a provider or space change within seconds.
Pure SQL, so `--sql` output works offline.

The downgrade leaves revision 0004 what it expects: the seed's columns (`messages.embedding`,
`atoms.embedding` and their HNSW indexes) holding the active space's vectors, as `vector`.
That is so after a switch finished or rolled back; while one is under way (a target's `_next`
columns) or cut over and not finished (the previous space's `_prev` columns), or when the active
space is halfvec, it refuses before touching anything and names the command to run first: it
never drops a space's vectors.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import context, op
from app.core.config import get_settings
from app.core.errors import ConfigurationError

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BUMP_FUNCTION = """
CREATE OR REPLACE FUNCTION tt_bump_embedding_config() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE embedding_config SET version = version + 1, changed_at = now() WHERE id = 1;
  RETURN NULL;
END $$
"""
TRIGGERED = ("llm_providers", "embedding_spaces")


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _seed_sql() -> str:
    from app.embedding.provider_service import spec_from_settings

    spec = spec_from_settings(get_settings())
    return f"""
INSERT INTO embedding_spaces (entity, state, provider_id, provider_name, provider_type, model,
                              dimensions, storage, column_name, index_name, activated_at)
SELECT e.entity, 'active', p.id, coalesce(p.name, {_literal(spec.name)}),
       coalesce(p.type, {_literal(spec.type.value)}),
       coalesce(p.embedding_model, {_literal(spec.model)}), a.atttypmod, t.typname,
       'embedding', e.entity || '_embedding_hnsw_idx', now()
FROM (VALUES ('messages'), ('atoms')) AS e(entity)
JOIN pg_attribute a ON a.attrelid = to_regclass(e.entity) AND a.attname = 'embedding'
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN llm_providers p ON p.is_default AND p.is_active AND p.embedding_dimensions = a.atttypmod
"""


def _create_spaces() -> None:
    op.create_table(
        "embedding_spaces",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("entity", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("phase", sa.Text(), nullable=True),
        sa.Column("provider_id", sa.Uuid(), nullable=True),
        sa.Column("provider_name", sa.Text(), nullable=False),
        sa.Column("provider_type", sa.Text(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("dimensions", sa.Integer(), nullable=False),
        sa.Column("storage", sa.Text(), nullable=False),
        sa.Column("column_name", sa.Text(), nullable=False),
        sa.Column("index_name", sa.Text(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "entity IN ('messages', 'atoms')", name=op.f("ck_embedding_spaces_entity")
        ),
        sa.CheckConstraint(
            "state IN ('active', 'target', 'previous', 'retired')",
            name=op.f("ck_embedding_spaces_state"),
        ),
        sa.CheckConstraint(
            "storage IN ('vector', 'halfvec')", name=op.f("ck_embedding_spaces_storage")
        ),
        sa.CheckConstraint("dimensions > 0", name=op.f("ck_embedding_spaces_dimensions")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_embedding_spaces")),
    )
    op.create_index(
        "uq_embedding_spaces_live",
        "embedding_spaces",
        ["entity", "state"],
        unique=True,
        postgresql_where=sa.text("state <> 'retired'"),
    )


def _create_config() -> None:
    op.create_table(
        "embedding_config",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column(
            "changed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint("id = 1", name=op.f("ck_embedding_config_one_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_embedding_config")),
    )
    op.execute("INSERT INTO embedding_config (id, version) VALUES (1, 0)")
    op.execute(BUMP_FUNCTION)
    for table in TRIGGERED:
        op.execute(
            f"CREATE TRIGGER tt_{table}_config_version AFTER INSERT OR UPDATE OR DELETE "
            f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION tt_bump_embedding_config()"
        )


def upgrade() -> None:
    _create_spaces()
    _create_config()
    op.execute(_seed_sql())


CMD = "tasktracker embeddings"
# Why the downgrade cannot run yet, and the fix (the first that applies).
BLOCKERS = (
    (
        "EXISTS (SELECT 1 FROM embedding_spaces WHERE state = 'target') OR EXISTS (SELECT 1 "
        "FROM pg_attribute WHERE attrelid IN ('messages'::regclass, 'atoms'::regclass) AND "
        "attname LIKE 'embedding%\\_next' AND NOT attisdropped)",
        "an embedding switch is under way (its target columns embedding_next would be "
        f"dropped). Fix: `{CMD} rollback` to abandon it, or `{CMD} cutover` then `{CMD} "
        "finish`; then downgrade",
    ),
    (
        "EXISTS (SELECT 1 FROM embedding_spaces WHERE state = 'previous') OR EXISTS (SELECT 1 "
        "FROM pg_attribute WHERE attrelid IN ('messages'::regclass, 'atoms'::regclass) AND "
        "attname LIKE 'embedding%\\_prev' AND NOT attisdropped)",
        "an embedding switch was cut over and not finished (the previous space's columns "
        f"embedding_prev would be dropped). Fix: `{CMD} finish` to keep the new model, or "
        f"`{CMD} rollback` to go back to the old one; then downgrade",
    ),
    (
        "EXISTS (SELECT 1 FROM embedding_spaces WHERE state = 'active' AND storage <> 'vector')",
        "the active embedding space stores halfvec, which revision 0004 does not know. Fix: "
        f"`{CMD} switch --provider NAME --storage vector --wait`, `{CMD} cutover`, "
        f"`{CMD} finish`; then downgrade",
    ),
)


def _refuse_if_blocked() -> None:
    """Online: one line naming the fix (alembic's env prints it). With --sql: the same check
    as a statement that raises, so the printed script stops there too."""
    if context.is_offline_mode():
        for condition, message in BLOCKERS:
            op.execute(
                f"DO $$ BEGIN IF {condition} THEN RAISE EXCEPTION '%', "
                f"{_literal('cannot downgrade below 0005: ' + message)}; END IF; END $$"
            )
        return
    bind = op.get_bind()
    for condition, message in BLOCKERS:
        if bind.execute(sa.text(f"SELECT {condition}")).scalar():
            raise ConfigurationError(f"cannot downgrade below 0005: {message}")


def downgrade() -> None:
    _refuse_if_blocked()
    for table in TRIGGERED:
        op.execute(f"DROP TRIGGER IF EXISTS tt_{table}_config_version ON {table}")
    op.execute("DROP FUNCTION IF EXISTS tt_bump_embedding_config()")
    op.drop_table("embedding_config")
    op.drop_index("uq_embedding_spaces_live", table_name="embedding_spaces")
    op.drop_table("embedding_spaces")
