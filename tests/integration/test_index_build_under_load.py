"""A concurrent HNSW build lets writers through; a plain one blocks them (behaviour, not speed)."""

from __future__ import annotations

from collections.abc import Callable

from bench.index_build import build_under_load, prepare_table


async def test_writers_are_not_blocked_by_a_concurrent_build(make_db: Callable[[], str]) -> None:
    url = make_db()
    await prepare_table(url, rows=20_000, dims=64)

    concurrent = await build_under_load(url, concurrently=True, rows=20_000, dims=64)
    plain = await build_under_load(url, concurrently=False, rows=20_000, dims=64)

    assert concurrent.writes_during_build > 0, concurrent
    assert plain.writes_during_build == 0, plain
