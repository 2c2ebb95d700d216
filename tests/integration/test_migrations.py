"""The schema comes from Alembic, and Alembic's runs are repeatable."""

from __future__ import annotations

import hashlib

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from tests.conftest import alembic
from tests.services import PostgresForTests


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
        assert "0004 (head)" in alembic(url, "current").stdout
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
