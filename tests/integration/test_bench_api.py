"""The API benchmark on tiny sizes: a real API process, the stub process, real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import asyncpg
import nats
import pytest

from bench.api import Plan, Provider, Queries, config, load_messages, measure, render, targets

PLAN = Plan(rows=300, levels=(1, 4), rounds=2, seconds=0.6, warmup=0.2, clusters=5)
STUB_384 = Provider("stub", "stub", 384, cached_variant=True)  # the test template is 384-d


def test_uncached_queries_are_distinct_and_cached_ones_repeat() -> None:
    uncached, cached = Queries(cached=False), Queries(cached=True)
    assert len({uncached.next() for _ in range(1000)}) == 1000
    assert len({cached.next() for _ in range(1000)}) <= 8


async def _other_backends(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
        )
    finally:
        await conn.close()


async def _bench_streams(nats_url: str) -> list[str]:
    client = await nats.connect(nats_url)
    try:
        names = await client.jetstream().streams_info()
        return [s.config.name for s in names if (s.config.name or "").startswith("benchapi")]
    finally:
        await client.close()


async def test_search_through_http_is_measured_and_everything_stops(
    make_db: Callable[[], str], nats_url: str, tmp_path: Path
) -> None:
    url = make_db()
    await load_messages(url, PLAN.rows, STUB_384.dims, PLAN.clusters)

    variants = await measure(nats_url, [(url, STUB_384)], PLAN)

    assert [v["name"] for v in variants] == ["stub", "stub, cached"]
    for variant in variants:
        assert [level["clients"] for level in variant["levels"]] == [1, 4]
        for level in variant["levels"]:
            summary = level["summary"]
            assert len(level["rounds"]) == PLAN.rounds
            assert summary["errors"] == 0, [r["error_kinds"] for r in level["rounds"]]
            assert summary["requests"] > 0
            assert 0 < summary["p50_ms"]["median"] <= summary["p95_ms"]["median"]
            assert summary["requests_per_second"]["median"] > 0
            assert summary["cpu_ms_per_request"]["api"]["median"] > 0
            assert summary["cpu_ms_per_request"]["client"] is not None
    # Every query missed the cache, so every one went to the stub process.
    assert variants[0]["levels"][0]["summary"]["cpu_ms_per_request"]["stub"] is not None
    # The API process, its connections and its stream are gone.
    for _ in range(50):
        if await _other_backends(url) == 0:
            break
        await asyncio.sleep(0.1)
    assert await _other_backends(url) == 0
    assert await _bench_streams(nats_url) == []

    section = {"config": config(PLAN, quick=True), "variants": variants}
    rows = targets(section)
    assert [row["met"] for row in rows][-1] is True  # no errors
    assert rows[0]["name"].startswith("API search p50, stub provider, 1 client")

    pytest.importorskip("matplotlib")
    markdown = render(section, tmp_path)
    assert markdown.startswith("## ")
    assert "| stub | 1 |" in markdown and "| stub, cached | 4 |" in markdown
    assert "(bench/api_search.png)" in markdown
    assert (tmp_path / "api_search.png").stat().st_size > 10_000
