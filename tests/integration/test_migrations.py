"""The schema comes from Alembic, and Alembic's runs are repeatable."""

from __future__ import annotations

import hashlib

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from testkit.launchers import PostgresForTests
from tests.conftest import REPO_ROOT, alembic


async def test_schema_has_tables_extension_and_vector_columns(session: AsyncSession) -> None:
    tables = set(
        (
            await session.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            )
        ).scalars()
    )
    assert {
        "messages",
        "atoms",
        "topics",
        "topic_atoms",
        "atom_messages",
        "llm_providers",
        "api_tokens",
    } <= tables
    version = (
        await session.execute(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'"))
    ).scalar_one()
    assert tuple(int(p) for p in version.split(".")) >= (0, 5, 0)
    column_type = (
        await session.execute(
            text(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = 'messages'::regclass AND attname = 'embedding'"
            )
        )
    ).scalar_one()
    assert column_type == "vector(384)"


async def test_content_hash_matches_python_sha256(session: AsyncSession) -> None:
    content = "Логін падає з ERR_AUTH_401 — fixed in TT-1482 ✅"
    row = (
        await session.execute(
            text(
                "INSERT INTO messages (id, author, channel, content, sent_at) "
                "VALUES (gen_random_uuid(), 'a', 'backend', :c, now()) RETURNING content_hash"
            ),
            {"c": content},
        )
    ).scalar_one()
    assert row == hashlib.sha256(content.encode()).hexdigest()


def test_upgrade_twice_downgrade_and_upgrade_again(postgres: PostgresForTests) -> None:
    postgres.create_database("tt_cycle")
    url = postgres.url("tt_cycle")
    try:
        for args in (
            ["upgrade", "head"],
            ["upgrade", "head"],
            ["downgrade", "base"],
            ["upgrade", "head"],
        ):
            result = alembic(url, *args)
            assert result.returncode == 0, (args, result.stderr)
        assert "0005 (head)" in alembic(url, "current").stdout
        check = alembic(url, "check")
        assert check.returncode == 0, check.stdout + check.stderr
        assert "No new upgrade operations detected" in check.stdout + check.stderr
    finally:
        postgres.drop_database("tt_cycle")


def test_offline_sql_needs_no_database() -> None:
    result = alembic("postgresql://nobody@127.0.0.1:1/none", "upgrade", "head", "--sql")
    assert result.returncode == 0, result.stderr
    assert "CREATE EXTENSION IF NOT EXISTS vector" in result.stdout
    assert "CREATE INDEX CONCURRENTLY IF NOT EXISTS messages_embedding_hnsw_idx" in result.stdout


def test_offline_downgrade_of_the_spaces_checks_for_a_switch_first() -> None:
    """`downgrade --sql` prints the guard before the drops: piped to psql mid-switch, it stops."""
    result = alembic("postgresql://nobody@127.0.0.1:1/none", "downgrade", "0005:0004", "--sql")
    assert result.returncode == 0, result.stderr
    guard = result.stdout.index("cannot downgrade below 0005: an embedding switch is under way")
    assert guard < result.stdout.index("DROP TABLE embedding_spaces")


def _index_oids(postgres: PostgresForTests, database: str) -> dict[str, str]:
    out = postgres.psql(
        "SELECT c.relname || '=' || c.oid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid "
        "WHERE c.relname LIKE '%embedding_hnsw_idx' AND i.indisvalid ORDER BY 1",
        database,
    )
    return dict(line.split("=") for line in out.split())


def _fresh(postgres: PostgresForTests, name: str, template: str | None = None) -> str:
    postgres.drop_database(name)
    postgres.create_database(name, template=template)
    return postgres.url(name)


def test_upgrade_head_keeps_a_correct_index_as_it_is(
    postgres: PostgresForTests, template_db: str
) -> None:
    """The repair after every upgrade leaves a right index alone: same OID, nothing rebuilt."""
    url = _fresh(postgres, "tt_keep", template_db)
    try:
        before = _index_oids(postgres, "tt_keep")
        assert set(before) == {"atoms_embedding_hnsw_idx", "messages_embedding_hnsw_idx"}
        result = alembic(url, "upgrade", "head")
        assert result.returncode == 0, result.stderr
        assert _index_oids(postgres, "tt_keep") == before
    finally:
        postgres.drop_database("tt_keep")


def head_revision() -> str:
    """The head of the project's revisions, as alembic's script directory knows it."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config(toml_file=str(REPO_ROOT / "pyproject.toml"))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def test_the_whole_offline_sql_builds_the_schema_in_an_empty_database(
    postgres: PostgresForTests,
) -> None:
    """`alembic upgrade head --sql` piped through psql as printed gives the online schema."""
    sql = alembic("postgresql://nobody@127.0.0.1:1/none", "upgrade", "head", "--sql")
    assert sql.returncode == 0, sql.stderr
    url = _fresh(postgres, "tt_offline")
    try:
        postgres.psql(sql.stdout, "tt_offline")
        assert postgres.psql("SELECT version_num FROM alembic_version", "tt_offline").strip() == (
            head_revision()
        )
        assert set(_index_oids(postgres, "tt_offline")) == {
            "atoms_embedding_hnsw_idx",
            "messages_embedding_hnsw_idx",
        }
        check = alembic(url, "check")
        assert check.returncode == 0, check.stdout + check.stderr
        assert "No new upgrade operations detected" in check.stdout + check.stderr
    finally:
        postgres.drop_database("tt_offline")


def test_pgvector_older_than_0_5_is_refused_before_anything_is_touched(
    postgres: PostgresForTests, template_db: str
) -> None:
    """The index revision names the version and the fix, and leaves the database at 0001."""
    url = _fresh(postgres, "tt_old_vector", template_db)
    try:
        assert alembic(url, "downgrade", "0001").returncode == 0
        # The catalogue says 0.4.4: what an old pgvector install reports (no HNSW before 0.5.0).
        postgres.psql(
            "UPDATE pg_extension SET extversion = '0.4.4' WHERE extname = 'vector'",
            "tt_old_vector",
        )
        result = alembic(url, "upgrade", "head")
        assert result.returncode == 1
        line = result.stderr.strip()
        assert line.startswith("error: pgvector 0.4.4 at ") and "\n" not in line, line
        assert "has no HNSW indexes (needs >= 0.5.0). Fix: ALTER EXTENSION vector UPDATE" in line
        version = postgres.psql("SELECT version_num FROM alembic_version", "tt_old_vector")
        assert version.strip() == "0001"
        assert _index_oids(postgres, "tt_old_vector") == {}
    finally:
        postgres.drop_database("tt_old_vector")
