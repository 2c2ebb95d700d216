"""The add_vector_indexes revision: built CONCURRENTLY, repaired when invalid, used by search."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import asyncpg
import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.embedded import psql_binary
from app.core.urls import to_libpq_url
from app.db import create_engine, session_factory
from app.embedding.entities import MESSAGES
from app.indexes.catalog import VECTOR_INDEXES
from app.search import semantic_search_service as search
from tests.conftest import alembic
from tests.factories import embed_randomly_sql, insert_messages_sql

CREATE_MESSAGES_INDEX = (
    "CREATE INDEX CONCURRENTLY messages_embedding_hnsw_idx ON messages "
    "USING hnsw (embedding vector_cosine_ops) WITH (m = {m}, ef_construction = 64)"
)


async def index_state(url: str, name: str) -> tuple[bool, bool, str] | None:
    conn = await asyncpg.connect(to_libpq_url(url))
    try:
        row = await conn.fetchrow(
            "SELECT i.indisvalid, i.indisready, pg_get_indexdef(c.oid) AS def FROM pg_class c "
            "JOIN pg_index i ON i.indexrelid = c.oid WHERE c.relname = $1",
            name,
        )
        return None if row is None else (row["indisvalid"], row["indisready"], row["def"])
    finally:
        await conn.close()


async def plant_invalid_index(url: str) -> None:
    """Interrupt a concurrent build: it times out waiting for an open writer, leaving INVALID."""
    writer = await asyncpg.connect(to_libpq_url(url))
    builder = await asyncpg.connect(to_libpq_url(url))
    try:
        await builder.execute("DROP INDEX IF EXISTS messages_embedding_hnsw_idx")
        transaction = writer.transaction()
        await transaction.start()
        await writer.execute(
            "INSERT INTO messages (id, author, channel, content, sent_at) "
            "VALUES (gen_random_uuid(), 'w', 'c', 'in flight', now())"
        )
        await builder.execute("SET lock_timeout = '300ms'")
        with pytest.raises(asyncpg.LockNotAvailableError):
            await builder.execute(CREATE_MESSAGES_INDEX.format(m=16))
        await transaction.rollback()
    finally:
        await writer.close()
        await builder.close()


@pytest.fixture
async def fresh(make_db: Callable[[], str]) -> AsyncIterator[str]:
    yield make_db()


async def test_upgrade_builds_valid_hnsw_indexes_with_the_right_definition(fresh: str) -> None:
    for index in VECTOR_INDEXES:
        state = await index_state(fresh, index.name)
        assert state is not None
        valid, ready, definition = state
        assert valid and ready
        assert "USING hnsw" in definition and "vector_cosine_ops" in definition
        assert "m='16'" in definition and "ef_construction='64'" in definition


async def test_invalid_index_left_by_interrupted_build_is_rebuilt_by_upgrade(fresh: str) -> None:
    await plant_invalid_index(fresh)
    state = await index_state(fresh, "messages_embedding_hnsw_idx")
    assert state is not None and state[0] is False, "the planted index should be INVALID"

    result = alembic(fresh, "upgrade", "head")

    assert result.returncode == 0, result.stderr
    state = await index_state(fresh, "messages_embedding_hnsw_idx")
    assert state is not None and state[0] and state[1]


async def test_index_with_other_parameters_is_replaced(fresh: str) -> None:
    conn = await asyncpg.connect(to_libpq_url(fresh))
    await conn.execute("DROP INDEX messages_embedding_hnsw_idx")
    await conn.execute(CREATE_MESSAGES_INDEX.format(m=8))
    await conn.close()

    assert alembic(fresh, "upgrade", "head").returncode == 0

    state = await index_state(fresh, "messages_embedding_hnsw_idx")
    assert state is not None and "m='16'" in state[2]


async def test_invalid_index_is_repaired_when_the_revision_itself_runs(fresh: str) -> None:
    assert alembic(fresh, "downgrade", "0001").returncode == 0
    await plant_invalid_index(fresh)

    result = alembic(fresh, "-x", "repair=0", "upgrade", "head")

    assert result.returncode == 0, result.stderr
    state = await index_state(fresh, "messages_embedding_hnsw_idx")
    assert state is not None and state[0]


async def test_offline_sql_runs_through_psql_as_printed_and_repairs(fresh: str) -> None:
    assert alembic(fresh, "downgrade", "0001").returncode == 0
    await plant_invalid_index(fresh)
    sql = alembic(fresh, "upgrade", "0001:0002", "--sql")  # the index revision alone
    assert sql.returncode == 0, sql.stderr
    assert "BEGIN;\n\nCREATE INDEX CONCURRENTLY" not in sql.stdout

    for _ in range(2):  # as printed, and again: the second run changes nothing
        run = subprocess.run(
            [str(psql_binary()), "-X", "-v", "ON_ERROR_STOP=1", to_libpq_url(fresh)],
            input=sql.stdout.replace(
                "UPDATE alembic_version SET version_num='0002' WHERE alembic_version.version_num = '0001'",
                "SELECT 1",
            ),
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stderr
        state = await index_state(fresh, "messages_embedding_hnsw_idx")
        assert state is not None and state[0] and state[1]


async def test_downgrade_drops_both_indexes(fresh: str) -> None:
    assert alembic(fresh, "downgrade", "0001").returncode == 0
    for index in VECTOR_INDEXES:
        assert await index_state(fresh, index.name) is None


async def hnsw_scans(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    text(
                        "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = 'messages_embedding_hnsw_idx'"
                    )
                )
            ).scalar_one()
        )


@pytest.fixture
async def big_table(make_db: Callable[[], str]) -> AsyncIterator[AsyncEngine]:
    """3,000 embedded messages in 10 channels: big enough that the planner has a choice."""
    url = make_db()
    engine = create_engine(
        url=to_libpq_url(url).replace("postgresql://", "postgresql+asyncpg://", 1),
        pool_size=2,
        max_overflow=0,
    )
    async with engine.begin() as conn:
        await insert_messages_sql(conn, 3000, channels=10)
        await embed_randomly_sql(conn, "messages", 384)
        await conn.execute(text("ANALYZE messages"))
    yield engine
    await engine.dispose()


def _query() -> np.ndarray:
    rng = np.random.default_rng(7)
    return (rng.random(384) - 0.5).astype(np.float32)


async def test_explain_of_the_search_query_uses_the_hnsw_index(big_table: AsyncEngine) -> None:
    async with big_table.connect() as conn:
        await conn.execute(text("SET hnsw.ef_search = 64"))
        plan = "\n".join(
            row[0]
            for row in await conn.execute(
                text(
                    "EXPLAIN SELECT id FROM messages ORDER BY embedding <=> CAST(:q AS vector) LIMIT 10"
                ),
                {"q": _query()},
            )
        )
    assert "Index Scan using messages_embedding_hnsw_idx" in plan, plan


async def test_index_still_used_after_many_runs_on_pooled_connections(
    big_table: AsyncEngine,
) -> None:
    before = await hnsw_scans(big_table)
    runs = 12  # past the 5 custom plans after which Postgres may cache a generic plan
    for _ in range(runs):
        async with session_factory(big_table)() as session:
            page = await search.search(session, MESSAGES, _query(), limit=10)
            assert len(page.hits) == 10
            await session.execute(text("SELECT pg_stat_force_next_flush()"))
            await session.commit()
    assert await hnsw_scans(big_table) - before >= runs


async def test_filtered_search_returns_limit_rows_with_the_index(big_table: AsyncEngine) -> None:
    # An unindexed column: the choice is HNSW with the filter, or a scan of every row.
    filters = search.SearchFilters(author="author3")  # 428 of 3,000 rows
    limit = 10  # ef_search 40 over a graph where 1 row in 7 matches finds ~6 without iterating
    async with session_factory(big_table)() as session:
        page = await search.search(
            session,
            MESSAGES,
            _query(),
            limit=limit,
            filters=filters,
            tuning=search.SearchTuning(ef_search=40),
        )
        assert len(page.hits) == limit
        assert {hit.row["author"] for hit in page.hits} == {"author3"}
        plan = "\n".join(
            row[0]
            for row in await session.execute(
                text(
                    "EXPLAIN SELECT id FROM messages WHERE author = 'author3' ORDER BY embedding <=> CAST(:q AS vector) LIMIT 10"
                ),
                {"q": _query()},
            )
        )
        assert "messages_embedding_hnsw_idx" in plan, plan

        # Without iterative scans the same query, on the index, comes back short: the test
        # above can fail. The plan is pinned (an exact scan would return all 10), and ef_search
        # is 10: the scan then stops at 10 candidates, which are all author3's with a chance of
        # (1/7)^10; at 40 about 6 of them are (random vectors), and 10 or more 1 time in 25.
        await session.execute(text("SELECT set_config('hnsw.iterative_scan', 'off', true)"))
        await session.execute(text("SELECT set_config('hnsw.ef_search', '10', true)"))
        await session.execute(text("SELECT set_config('enable_seqscan', 'off', true)"))
        control = (
            "SELECT count(*) FROM (SELECT id FROM messages WHERE author = 'author3' "
            "ORDER BY embedding <=> CAST(:q AS vector) LIMIT 10) s"
        )
        explained = await session.execute(text(f"EXPLAIN {control}"), {"q": _query()})
        assert "messages_embedding_hnsw_idx" in "\n".join(row[0] for row in explained)
        short = await session.execute(text(control), {"q": _query()})
        assert short.scalar_one() < limit


SEARCH_CASES = [
    {"tuning": search.SearchTuning(ef_search=ef)} for ef in (10, 20, 40, 64, 200, 400, 1000)
] + [
    {"offset": 200},
    {"offset": 900, "limit": 100},
    {"filters": search.SearchFilters(channel="c3")},
    {"filters": search.SearchFilters(author="author3"), "offset": 300},
    {"filters": search.SearchFilters(sent_after=datetime(2000, 1, 1, tzinfo=UTC))},
    {"threshold": 0.9},
    {"threshold": 0.2, "offset": 500, "filters": search.SearchFilters(channel="c1")},
]


async def plans(engine: AsyncEngine, tuning_min_rows: int) -> list[str]:
    found = []
    for case in SEARCH_CASES:
        args = dict(case)
        tuning = args.pop("tuning", search.SearchTuning())
        tuning = search.SearchTuning(tuning.ef_search, tuning.max_scan_tuples, tuning_min_rows)
        async with session_factory(engine)() as session:
            found.append(
                await search.explain_vector_page(
                    session,
                    MESSAGES,
                    _query(),
                    tuning=tuning,
                    **args,  # type: ignore[arg-type]
                )
            )
    return found


async def test_every_search_plan_uses_the_hnsw_index_whatever_ef_offset_filter_or_threshold(
    big_table: AsyncEngine,
) -> None:
    search._plan_facts.clear()
    for case, plan in zip(SEARCH_CASES, await plans(big_table, 1000), strict=True):
        assert "Index Scan using messages_embedding_hnsw_idx" in plan, (case, plan)
        assert "Seq Scan on messages" not in plan, (case, plan)

    # The same statements with the planner left alone: some of them scan the table, so the
    # assertions above can fail.
    search._plan_facts.clear()
    unforced = await plans(big_table, 10**9)
    assert any("Seq Scan on messages" in plan for plan in unforced)
    search._plan_facts.clear()
