"""`tasktracker index status|rebuild`: what operators run, with the revision's SQL and progress."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import asyncpg

from app.core.embedded import psql_binary
from app.core.urls import to_libpq_url
from tests.conftest import alembic
from tests.integration.test_cli import cli
from tests.integration.test_index_build import (
    BUILDING_SQL,
    MESSAGES_INDEX,
    SLOW_BUILD,
    fill_messages,
    index_valid,
    interrupted_upgrade,
    upgrade_running,
    wait_for,
)
from tests.integration.test_vector_indexes import plant_invalid_index


async def index_oid(url: str, name: str) -> int | None:
    conn = await asyncpg.connect(to_libpq_url(url))
    try:
        return await conn.fetchval("SELECT to_regclass($1)::oid::int", name)  # type: ignore[no-any-return]
    finally:
        await conn.close()


# Settings asking for another graph than the revision's m=16, ef_construction=64.
EF_40 = {"INDEX_HNSW_EF_CONSTRUCTION": "40"}
GRAPH_40 = "m=16, ef_construction=40"
# A vector search as the planner sees it: which index, if any, answers it.
SEARCH_PLAN = (
    "EXPLAIN (COSTS OFF) SELECT id FROM messages "
    "ORDER BY embedding <=> (SELECT embedding FROM messages LIMIT 1) LIMIT 10"
)


def index_command(
    url: str, tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`tasktracker index ARGS` against `url`."""
    return cli("index", *args, env={"DATABASE_URL": url, "DATA_DIR": str(tmp_path), **(env or {})})


async def reloptions(url: str, name: str) -> tuple[list[str], str | None]:
    """The index's parameters in the catalog, and its build note."""
    conn = await asyncpg.connect(to_libpq_url(url))
    try:
        row = await conn.fetchrow(
            "SELECT reloptions, obj_description(oid, 'pg_class') FROM pg_class WHERE relname = $1",
            name,
        )
        assert row is not None
        return list(row[0]), row[1]
    finally:
        await conn.close()


def status(
    url: str, tmp_path: Path, env: dict[str, str] | None = None
) -> dict[str, dict[str, object]]:
    result = index_command(url, tmp_path, "status", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return {report["name"]: report for report in json.loads(result.stdout)}


async def test_status_shows_health_size_and_the_last_build_of_each_index(
    make_db: Callable[[], str], tmp_path: Path
) -> None:
    url = make_db()

    reports = status(url, tmp_path)

    assert set(reports) == {MESSAGES_INDEX, "atoms_embedding_hnsw_idx"}
    for report in reports.values():
        assert report["healthy"] and report["valid"] and report["definition_ok"]
        assert int(report["size_bytes"]) > 0  # type: ignore[call-overload]
        build = report["last_build"]
        assert isinstance(build, dict) and build["how"] == "CONCURRENTLY" and build["rows"] == 0
    table = index_command(url, tmp_path, "status")
    assert table.returncode == 0 and "last built" in table.stdout


async def test_rebuild_of_a_healthy_index_reindexes_it_concurrently(
    make_db: Callable[[], str], tmp_path: Path
) -> None:
    url = make_db()
    await fill_messages(url, 500)
    before = await index_oid(url, MESSAGES_INDEX)

    result = index_command(url, tmp_path, "rebuild", "--entity", "messages")

    assert result.returncode == 0, result.stderr
    assert "REINDEX CONCURRENTLY" in result.stderr and "valid," in result.stderr
    assert await index_oid(url, MESSAGES_INDEX) != before  # a new index took the name
    build = status(url, tmp_path)[MESSAGES_INDEX]["last_build"]
    assert (
        isinstance(build, dict) and build["how"] == "REINDEX CONCURRENTLY" and build["rows"] == 500
    )


async def test_rebuild_drops_an_invalid_index_and_builds_it_blocking_when_asked(
    make_db: Callable[[], str], tmp_path: Path
) -> None:
    url = make_db()
    await plant_invalid_index(url)
    assert await index_valid(url, MESSAGES_INDEX) is False

    result = index_command(url, tmp_path, "rebuild", "--entity", "messages", "--blocking")

    assert result.returncode == 0, result.stderr
    assert "dropping it to build it again" in result.stderr
    assert await index_valid(url, MESSAGES_INDEX) is True
    build = status(url, tmp_path)[MESSAGES_INDEX]["last_build"]
    assert isinstance(build, dict) and build["how"] == "blocking"


def test_rebuild_names_the_choices_for_an_unknown_entity(tmp_path: Path) -> None:
    result = cli("index", "rebuild", "--entity", "topics", env={"DATA_DIR": str(tmp_path)})

    assert result.returncode == 2
    assert "--entity must be messages, atoms or all" in result.stderr


async def test_new_hnsw_parameters_are_built_by_the_next_upgrade_while_searches_keep_an_index(
    make_db: Callable[[], str], tmp_path: Path
) -> None:
    """INDEX_HNSW_EF_CONSTRUCTION changed: status calls the index wrong, and `alembic upgrade
    head` sets the parameters and builds the new graph with REINDEX CONCURRENTLY; every search
    planned during that build still uses the index (a drop-and-build would scan the table)."""
    url = make_db()
    await fill_messages(url, 8_000)
    assert not status(url, tmp_path, EF_40)[MESSAGES_INDEX]["definition_ok"]

    plans: list[str] = []
    async with upgrade_running(url, {**SLOW_BUILD, **EF_40}) as (process, watcher):
        # as the service plans (app.db.INDEX_PLANS): the index when one is valid, else a scan
        await watcher.execute("SET enable_seqscan = off")
        await wait_for(watcher, BUILDING_SQL, process)
        while len(plans) < 20:  # one plan at least, taken once the build ran
            plans.append("\n".join(row[0] for row in await watcher.fetch(SEARCH_PLAN)))
            if not await watcher.fetchval(BUILDING_SQL):
                break
        _, stderr = process.communicate(timeout=300)

    assert process.returncode == 0, stderr
    assert plans, "no search was planned while the new graph was being built"
    assert all(f"Index Scan using {MESSAGES_INDEX}" in plan for plan in plans), plans
    assert "REINDEX CONCURRENTLY" in stderr and "dropping it" not in stderr, stderr
    options, note = await reloptions(url, MESSAGES_INDEX)
    assert "ef_construction=40" in options and note is not None and GRAPH_40 in note
    reports = status(url, tmp_path, EF_40)
    assert all(report["healthy"] for report in reports.values()), reports
    build = reports[MESSAGES_INDEX]["last_build"]
    assert isinstance(build, dict) and build["how"] == "REINDEX CONCURRENTLY"
    assert build["rows"] == 8_000 and build["graph"] == GRAPH_40


async def test_a_graph_whose_reindex_never_ran_is_built_by_the_next_upgrade(
    make_db: Callable[[], str],
) -> None:
    """The catalog already says ef_construction=40 (an ALTER whose REINDEX was stopped), but the
    build note says the graph was made with 64: the upgrade builds it again."""
    url = make_db()
    await fill_messages(url, 300)
    conn = await asyncpg.connect(to_libpq_url(url))
    await conn.execute(f"ALTER INDEX {MESSAGES_INDEX} SET (ef_construction = 40)")
    await conn.close()

    result = alembic(url, "upgrade", "head", env=EF_40)

    assert result.returncode == 0, result.stderr
    assert f"index {MESSAGES_INDEX}: was built with other HNSW parameters" in result.stderr
    _, note = await reloptions(url, MESSAGES_INDEX)
    assert note is not None and GRAPH_40 in note


async def test_rebuild_applies_new_hnsw_parameters_concurrently(
    make_db: Callable[[], str], tmp_path: Path
) -> None:
    url = make_db()
    await fill_messages(url, 300)

    result = index_command(url, tmp_path, "rebuild", "--entity", "messages", env=EF_40)

    assert result.returncode == 0, result.stderr
    assert "REINDEX CONCURRENTLY" in result.stderr and "dropping it" not in result.stderr
    options, _ = await reloptions(url, MESSAGES_INDEX)
    assert "ef_construction=40" in options
    reports = status(url, tmp_path, EF_40)
    assert reports[MESSAGES_INDEX]["healthy"]
    assert not reports["atoms_embedding_hnsw_idx"]["definition_ok"]  # only what was asked


async def test_a_retune_stopped_half_way_is_run_again_even_on_an_index_noted_before_graphs(
    make_db: Callable[[], str], tmp_path: Path
) -> None:
    """The index's note names no graph (built before notes did): the retune names the old one
    before the ALTER, so when its REINDEX is stopped the index is still called wrong and the
    next upgrade builds it, rather than the catalog's new parameters passing for done."""
    url = make_db()
    await fill_messages(url, 8_000)
    conn = await asyncpg.connect(to_libpq_url(url))
    await conn.execute(f"""COMMENT ON INDEX {MESSAGES_INDEX} IS '{{"how": "CONCURRENTLY"}}'""")
    await conn.close()

    returncode, stderr = await interrupted_upgrade(url, {**SLOW_BUILD, **EF_40})

    assert returncode == 1, stderr
    options, note = await reloptions(url, MESSAGES_INDEX)
    assert "ef_construction=40" in options  # the ALTER ran
    assert note is not None and "m=16, ef_construction=64" in note
    assert not status(url, tmp_path, EF_40)[MESSAGES_INDEX]["definition_ok"]

    repaired = alembic(url, "upgrade", "head", env=EF_40)

    assert repaired.returncode == 0, repaired.stderr
    assert f"index {MESSAGES_INDEX}: was built with other HNSW parameters" in repaired.stderr
    _, note = await reloptions(url, MESSAGES_INDEX)
    assert note is not None and GRAPH_40 in note
    assert status(url, tmp_path, EF_40)[MESSAGES_INDEX]["healthy"]


async def test_offline_sql_applies_new_parameters_with_reindex_concurrently(
    make_db: Callable[[], str],
) -> None:
    url = make_db()
    await fill_messages(url, 300)
    sql = alembic(url, "upgrade", "0001:0002", "--sql", env=EF_40)  # the index revision alone
    assert sql.returncode == 0, sql.stderr
    script = sql.stdout.replace(
        "UPDATE alembic_version SET version_num='0002' WHERE alembic_version.version_num = '0001'",
        "SELECT 1",
    )

    run = subprocess.run(
        [str(psql_binary()), "-X", "-v", "ON_ERROR_STOP=1", "-e", to_libpq_url(url)],
        input=script,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert run.returncode == 0, run.stderr
    assert f"REINDEX INDEX CONCURRENTLY public.{MESSAGES_INDEX}" in run.stdout, run.stdout
    executed = [line for line in run.stdout.splitlines() if line.startswith("DROP INDEX")]
    assert not executed  # never without an index while it builds
    options, note = await reloptions(url, MESSAGES_INDEX)
    assert "ef_construction=40" in options and note is not None and GRAPH_40 in note
