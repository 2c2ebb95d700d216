"""Index build under load: a writer keeps inserting and updating while the HNSW index builds.

CREATE INDEX CONCURRENTLY must not block writers; a plain CREATE INDEX does (it holds a SHARE
lock). This measures both on the same table, in one run: build time, and the writes that started
and finished while the build ran, with their latencies.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import asyncpg

from app.indexes.catalog import build_session_sql
from testkit.vectors import centers_sql, near_center_sql

TABLE = "bench_index_build"


@dataclass
class BuildUnderLoad:
    concurrently: bool
    rows: int
    dims: int
    build_seconds: float
    writes_during_build: int
    # how long the server showed the build in progress (0: never seen, the count means nothing)
    build_seen_seconds: float
    write_p50_ms: float
    write_max_ms: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def prepare_table(url: str, rows: int, dims: int, clusters: int = 50) -> None:
    """A messages-like table of `rows` clustered unit-ish vectors, made inside Postgres."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        await conn.execute(
            f"CREATE TABLE {TABLE} (id bigserial PRIMARY KEY, channel text, content text, embedding vector({dims}))"
        )
        await conn.execute("SELECT setseed(0.5)")
        await conn.execute(
            f"""
            WITH centers AS ({centers_sql(clusters, dims)})
            INSERT INTO {TABLE} (channel, content, embedding)
            SELECT 'c' || (g % 10), 'row ' || g, {near_center_sql(0.2, "g")}
            FROM generate_series(1, {rows}) g JOIN centers ON centers.c = g % {clusters}
            """
        )
        await conn.execute(f"ANALYZE {TABLE}")
    finally:
        await conn.close()


# A write: (client start, client end) for its latency, (server start of its first statement,
# server clock after its last one took its lock) for whether it ran inside the build.
Write = tuple[float, float, float, float]
EPOCH = "extract(epoch FROM {})::float8"


async def _writer(url: str, dims: int, stop: asyncio.Event, log: list[Write]) -> None:
    conn = await asyncpg.connect(url)
    try:
        while not stop.is_set():
            began = time.monotonic()
            started, inserted = await conn.fetchrow(
                f"INSERT INTO {TABLE} (channel, content, embedding) "
                f"SELECT 'c1', 'new', (SELECT array_agg(random()) FROM generate_series(1, {dims}))::vector "
                f"RETURNING {EPOCH.format('statement_timestamp()')}, "
                f"{EPOCH.format('clock_timestamp()')}"
            )
            locked = await conn.fetchval(
                f"UPDATE {TABLE} SET content = content || '.' "
                f"WHERE id = (1 + floor(random() * 1000))::bigint "
                f"RETURNING {EPOCH.format('clock_timestamp()')}"
            )
            log.append((began, time.monotonic(), started, locked or inserted))
            await asyncio.sleep(0.01)
    finally:
        await conn.close()


async def _watch_build(url: str, pid: int, done: asyncio.Event) -> tuple[float, float] | None:
    """Server times of the first and last sight of the build in pg_stat_progress_create_index
    (it appears once the build holds its table lock): None if it was never seen."""
    conn = await asyncpg.connect(url)
    seen: list[float] = []
    try:
        while not done.is_set():
            at = await conn.fetchval(
                f"SELECT {EPOCH.format('clock_timestamp()')} "
                "FROM pg_stat_progress_create_index WHERE pid = $1",
                pid,
            )
            if at is not None:
                seen.append(at)
            await asyncio.sleep(0.01)
    finally:
        await conn.close()
    return (seen[0], seen[-1]) if seen else None


async def _build(conn: asyncpg.Connection, concurrently: bool) -> None:
    keyword = "CONCURRENTLY " if concurrently else ""
    await conn.execute(
        f"CREATE INDEX {keyword}{TABLE}_hnsw ON {TABLE} USING hnsw (embedding vector_cosine_ops) "
        "WITH (m = 16, ef_construction = 64)"
    )


async def build_under_load(
    url: str,
    *,
    concurrently: bool,
    rows: int,
    dims: int,
    work_mem: str = "1GB",
    parallel_workers: int = 2,
) -> BuildUnderLoad:
    """Build the index while a writer runs; count the writes that ran entirely during the build,
    by the server's clock: from the first to the last sight of the build in progress (so a
    client slowed by load cannot count a write that ran before the build took its lock)."""
    conn = await asyncpg.connect(url)
    stop, built = asyncio.Event(), asyncio.Event()
    log: list[Write] = []
    writer = asyncio.create_task(_writer(url, dims, stop, log))
    try:
        await conn.execute(f"DROP INDEX IF EXISTS {TABLE}_hnsw")
        for statement in build_session_sql(work_mem, parallel_workers, "1min"):
            await conn.execute(statement)
        await asyncio.sleep(0.3)  # the writer is running
        watcher = asyncio.create_task(_watch_build(url, conn.get_server_pid(), built))
        began = time.monotonic()
        try:
            await _build(conn, concurrently)
        finally:
            ended = time.monotonic()
            built.set()
            window = await watcher
    finally:
        stop.set()
        await writer
        await conn.close()
    during = [w for w in log if window and w[2] >= window[0] and w[3] <= window[1]]
    latencies = [(w[1] - w[0]) * 1000 for w in log if w[1] >= began]
    return BuildUnderLoad(
        concurrently=concurrently,
        rows=rows,
        dims=dims,
        build_seconds=round(ended - began, 2),
        writes_during_build=len(during),
        build_seen_seconds=round(window[1] - window[0], 2) if window else 0.0,
        write_p50_ms=round(statistics.median(latencies), 2) if latencies else 0.0,
        write_max_ms=round(max(latencies), 2) if latencies else 0.0,
    )


async def run(
    url: str, *, rows: int, dims: int, work_mem: str = "1GB", parallel_workers: int = 2
) -> list[BuildUnderLoad]:
    """Both builds, concurrent first, on the same freshly made table."""
    await prepare_table(url, rows, dims)
    results = [
        await build_under_load(
            url,
            concurrently=concurrently,
            rows=rows,
            dims=dims,
            work_mem=work_mem,
            parallel_workers=parallel_workers,
        )
        for concurrently in (True, False)
    ]
    conn = await asyncpg.connect(url)
    await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    await conn.close()
    return results
