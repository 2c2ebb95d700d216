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


async def _writer(url: str, dims: int, stop: asyncio.Event, log: list[tuple[float, float]]) -> None:
    conn = await asyncpg.connect(url)
    try:
        while not stop.is_set():
            began = time.monotonic()
            await conn.execute(
                f"INSERT INTO {TABLE} (channel, content, embedding) "
                f"SELECT 'c1', 'new', (SELECT array_agg(random()) FROM generate_series(1, {dims}))::vector"
            )
            await conn.execute(
                f"UPDATE {TABLE} SET content = content || '.' WHERE id = (1 + floor(random() * 1000))::bigint"
            )
            log.append((began, time.monotonic()))
            await asyncio.sleep(0.01)
    finally:
        await conn.close()


async def build_under_load(
    url: str,
    *,
    concurrently: bool,
    rows: int,
    dims: int,
    work_mem: str = "1GB",
    parallel_workers: int = 2,
) -> BuildUnderLoad:
    """Build the index while a writer runs; count the writes that ran entirely during the build."""
    conn = await asyncpg.connect(url)
    stop = asyncio.Event()
    log: list[tuple[float, float]] = []
    writer = asyncio.create_task(_writer(url, dims, stop, log))
    try:
        await conn.execute(f"DROP INDEX IF EXISTS {TABLE}_hnsw")
        for statement in build_session_sql(work_mem, parallel_workers, "1min"):
            await conn.execute(statement)
        await asyncio.sleep(0.3)  # the writer is running
        began = time.monotonic()
        keyword = "CONCURRENTLY " if concurrently else ""
        await conn.execute(
            f"CREATE INDEX {keyword}{TABLE}_hnsw ON {TABLE} USING hnsw (embedding vector_cosine_ops) "
            "WITH (m = 16, ef_construction = 64)"
        )
        ended = time.monotonic()
    finally:
        stop.set()
        await writer
        await conn.close()
    during = [(b, e) for b, e in log if b >= began and e <= ended]
    latencies = [(e - b) * 1000 for b, e in log if e >= began]
    return BuildUnderLoad(
        concurrently=concurrently,
        rows=rows,
        dims=dims,
        build_seconds=round(ended - began, 2),
        writes_during_build=len(during),
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
