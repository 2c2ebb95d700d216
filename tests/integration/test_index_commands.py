"""`tasktracker index status|rebuild`: what operators run, with the revision's SQL and progress."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import asyncpg

from app.core.urls import to_libpq_url
from tests.integration.test_cli import cli
from tests.integration.test_index_build import MESSAGES_INDEX, fill_messages, index_valid
from tests.integration.test_vector_indexes import plant_invalid_index


async def index_oid(url: str, name: str) -> int | None:
    conn = await asyncpg.connect(to_libpq_url(url))
    try:
        return await conn.fetchval("SELECT to_regclass($1)::oid::int", name)  # type: ignore[no-any-return]
    finally:
        await conn.close()


def index_command(url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`tasktracker index ARGS` against `url`."""
    return cli("index", *args, env={"DATABASE_URL": url, "DATA_DIR": str(tmp_path)})


def status(url: str, tmp_path: Path) -> dict[str, dict[str, object]]:
    result = index_command(url, tmp_path, "status", "--json")
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
