"""The index revision at production size, through `alembic upgrade head` as users run it: no client
timeout on the build, progress while it runs, the memory check, and one line when it fails."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from app.core.config import Settings
from app.core.urls import to_asyncpg_url, to_libpq_url
from app.db import alembic_argv, create_engine, migration_engine
from tests.conftest import alembic

REPO = Path(__file__).resolve().parents[2]
MESSAGES_INDEX = "messages_embedding_hnsw_idx"
# A build made slow on purpose: the graph spills out of a tiny maintenance_work_mem and the
# rest is inserted row by row, one process, progress read five times a second.
SLOW_BUILD = {
    "INDEX_MAINTENANCE_WORK_MEM": "1MB",
    "INDEX_MAINTENANCE_WORK_MEM_MAX": "1MB",
    "INDEX_PARALLEL_WORKERS": "0",
    "INDEX_PROGRESS_INTERVAL_SECONDS": "0.2",
}


@pytest.fixture
async def at_0001(make_db: Callable[[], str]) -> AsyncIterator[str]:
    """A database migrated to head, taken back to 0001 (no vector indexes)."""
    url = make_db()
    result = alembic(url, "downgrade", "0001")
    assert result.returncode == 0, result.stderr
    yield url


async def fill_messages(url: str, rows: int, dims: int = 384) -> None:
    """`rows` messages with random vectors, made inside Postgres."""
    conn = await asyncpg.connect(to_libpq_url(url))
    try:
        await conn.execute(
            "INSERT INTO messages (id, author, channel, content, sent_at, embedding) "
            "SELECT gen_random_uuid(), 'a', 'c' || (g % 5), 'message ' || g, now(), "
            f"(SELECT array_agg(random() - 0.5) FROM generate_series(1, {dims}) d "
            "WHERE g > 0)::vector FROM generate_series(1, $1) g",
            rows,
        )
    finally:
        await conn.close()


async def index_valid(url: str, name: str) -> bool | None:
    conn = await asyncpg.connect(to_libpq_url(url))
    try:
        return await conn.fetchval(  # type: ignore[no-any-return]
            "SELECT i.indisvalid AND i.indisready FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = $1",
            name,
        )
    finally:
        await conn.close()


def start_upgrade(url: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """`alembic upgrade head` in the background, stderr captured."""
    return subprocess.Popen(
        alembic_argv("upgrade", "head"),
        cwd=REPO,
        env={**os.environ, "DATABASE_URL": url, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


# The messages index's build, past its first blocks: the pid building it.
BUILDING_SQL = (
    "SELECT pid FROM pg_stat_progress_create_index WHERE relid = 'messages'::regclass "
    "AND phase LIKE 'building index%' AND blocks_done > 0"
)


@asynccontextmanager
async def upgrade_running(
    url: str, env: dict[str, str]
) -> AsyncIterator[tuple[subprocess.Popen[str], asyncpg.Connection]]:
    """`alembic upgrade head` in the background and a connection to watch it; the process is
    killed if it still runs at the end."""
    process = start_upgrade(url, env)
    conn = await asyncpg.connect(to_libpq_url(url))
    try:
        yield process, conn
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        await conn.close()


async def interrupted_upgrade(url: str, env: dict[str, str]) -> tuple[int, str]:
    """`alembic upgrade head` whose build's backend is terminated once it builds: exit, stderr."""
    async with upgrade_running(url, env) as (process, conn):
        pid = await wait_for(conn, BUILDING_SQL, process)
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


async def wait_for(
    conn: asyncpg.Connection, sql: str, process: subprocess.Popen[str], timeout: float = 120
) -> object:
    """Poll `sql` until it returns a value (not NULL); fail if the process ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await conn.fetchval(sql)
        if value is not None:
            return value
        if process.poll() is not None:
            raise AssertionError(
                f"alembic ended first: {process.stderr.read() if process.stderr else ''}"
            )
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not reached in {timeout}s: {sql}")


async def test_build_outlasting_the_apps_command_timeout_still_ends_valid(at_0001: str) -> None:
    """The app's pools cancel a statement after DB_COMMAND_TIMEOUT_SECONDS (here 1 s); the
    migration's connection has no such bound, so a build that waits 3x longer succeeds."""
    writer = await asyncpg.connect(to_libpq_url(at_0001))
    watcher = await asyncpg.connect(to_libpq_url(at_0001))
    transaction = writer.transaction()
    await transaction.start()
    await writer.execute(
        "INSERT INTO messages (id, author, channel, content, sent_at) "
        "VALUES (gen_random_uuid(), 'w', 'c', 'a writer the build must wait for', now())"
    )
    process = start_upgrade(
        at_0001, {"DB_COMMAND_TIMEOUT_SECONDS": "1", "INDEX_LOCK_TIMEOUT": "5min"}
    )
    try:
        # The build waits for the open writer; hold it until the build has waited 3 s.
        await wait_for(
            watcher,
            "SELECT 1 FROM pg_stat_activity WHERE query LIKE 'CREATE INDEX CONCURRENTLY%' "
            "AND wait_event_type = 'Lock' AND now() - query_start > interval '3 seconds'",
            process,
        )
        await transaction.commit()
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
        await writer.close()
        await watcher.close()

    assert process.returncode == 0, stderr
    assert await index_valid(at_0001, MESSAGES_INDEX)
    assert await index_valid(at_0001, "atoms_embedding_hnsw_idx")
    assert "waiting for writers before build" in stderr  # the progress said why it waited


async def test_app_pools_keep_their_command_timeout_and_migrations_have_none(db_url: str) -> None:
    settings = Settings(database_url=db_url, db_command_timeout_seconds=0.5)
    app_engine = create_engine(to_asyncpg_url(db_url), settings, pool_size=1, max_overflow=0)
    alembic_engine = migration_engine(to_asyncpg_url(db_url), settings)
    try:
        async with app_engine.connect() as conn:
            with pytest.raises(TimeoutError):
                await conn.exec_driver_sql("SELECT pg_sleep(2)")
        async with alembic_engine.connect() as conn:
            await conn.exec_driver_sql("SELECT pg_sleep(1)")
    finally:
        await app_engine.dispose()
        await alembic_engine.dispose()


async def test_interrupted_build_ends_in_one_line_and_the_next_upgrade_rebuilds_it(
    at_0001: str,
) -> None:
    await fill_messages(at_0001, 8_000)

    returncode, stderr = await interrupted_upgrade(at_0001, SLOW_BUILD)

    assert returncode == 1
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: building {MESSAGES_INDEX} failed:"), stderr
    assert "is left INVALID" in last and "alembic upgrade head" in last
    assert await index_valid(at_0001, MESSAGES_INDEX) is False

    repaired = alembic(at_0001, "upgrade", "head")

    assert repaired.returncode == 0, repaired.stderr
    assert f"index {MESSAGES_INDEX}: is INVALID" in repaired.stderr
    assert await index_valid(at_0001, MESSAGES_INDEX) is True


async def test_spilling_build_warns_with_the_setting_and_shows_a_line_per_tenth(
    at_0001: str,
) -> None:
    """The estimate says the graph will not fit the 1MB ceiling, names the value to set, and
    pgvector agrees (its spill notice); the plain progress has a line per tenth of the scan."""
    await fill_messages(at_0001, 8_000)

    result = alembic(at_0001, "upgrade", "head", env=SLOW_BUILD)

    assert result.returncode == 0, result.stderr
    lines = [
        line for line in result.stderr.splitlines() if line.startswith(f"index {MESSAGES_INDEX}")
    ]
    plan = next(line for line in lines if "building (CONCURRENTLY)" in line)
    assert "8,000 rows x 384 dims" in plan and "does not fit" in plan
    assert re.search(r"INDEX_MAINTENANCE_WORK_MEM_MAX=\d+MB", plan)
    assert any("hnsw graph no longer fits into maintenance_work_mem" in line for line in lines)
    tenths = [
        int(match.group(1))
        for line in lines
        if (match := re.search(r"loading tuples (\d+)% \(", line))
    ]
    assert len(tenths) >= 3 and tenths == sorted(tenths), lines
    assert len({t // 10 for t in tenths}) == len(tenths), "one line per tenth at most"
    assert lines[-1].startswith(f"index {MESSAGES_INDEX}: valid,") and "spilled" in lines[-1]


async def test_graph_that_fits_under_the_ceiling_gets_a_raised_setting_and_does_not_spill(
    at_0001: str,
) -> None:
    await fill_messages(at_0001, 8_000)

    result = alembic(
        at_0001,
        "upgrade",
        "head",
        env={
            **SLOW_BUILD,
            "INDEX_MAINTENANCE_WORK_MEM": "2MB",
            "INDEX_MAINTENANCE_WORK_MEM_MAX": "1GB",
        },
    )

    assert result.returncode == 0, result.stderr
    assert "maintenance_work_mem raised from 2MB to 64MB for this build" in result.stderr
    assert "no longer fits" not in result.stderr
    assert await index_valid(at_0001, MESSAGES_INDEX)
