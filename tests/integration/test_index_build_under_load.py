"""A concurrent HNSW build lets writers through; a plain one blocks them (behaviour, not speed).

A write counts as "during the build" by the server's clock (it began after the build was seen in
pg_stat_progress_create_index, which shows it once it holds its table lock, and took its own
locks before the build was last seen), so a client slowed by a loaded machine cannot count a
write that ran before the plain build's lock: the old client-side start time could.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.index_build import build_under_load, prepare_table


async def test_writers_are_not_blocked_by_a_concurrent_build(make_db: Callable[[], str]) -> None:
    url = make_db()
    await prepare_table(url, rows=20_000, dims=64)

    concurrent = await build_under_load(url, concurrently=True, rows=20_000, dims=64)
    plain = await build_under_load(url, concurrently=False, rows=20_000, dims=64)

    assert concurrent.build_seen_seconds > 0 and plain.build_seen_seconds > 0, (concurrent, plain)
    assert concurrent.writes_during_build > 0, concurrent
    assert plain.writes_during_build == 0, plain
