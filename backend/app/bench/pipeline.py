"""Pipeline throughput, side by side in one run on one database:

- ours: rows -> backfill -> NATS JetStream -> worker process(es) -> OpenAI-compatible stub over
  HTTP -> vectors written back; timed from the first publish to 100% coverage;
- naive: one HTTP request per row and one commit per row (the shape of the system we replace);
- raw write limit: precomputed vectors written with one `UPDATE ... FROM unnest(...)` per 1,000
  rows, no queue, no HTTP: the ceiling for this database on this machine.

The stub (tests/stubs/openai_stub.py) runs as its own process with zero added latency; its
vectors are precomputed, so what is measured is our overhead.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import asyncpg
import httpx
import numpy as np
from pgvector import Vector
from pgvector.asyncpg import register_vector

from app.core.config import REPO_ROOT, Settings
from app.core.supervisor import Child, stop_all, worker_child
from app.core.urls import to_asyncpg_url
from app.core.vector_indexes import VECTOR_INDEXES


@dataclass
class Rate:
    system: str
    rows: int
    seconds: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_second": round(self.rows_per_second, 1)}


def start_stub(dims: int) -> tuple[subprocess.Popen[str], str]:
    """The zero-latency stub as a separate process; returns it and its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.stubs.openai_stub", "--port", "0", "--dims", str(dims)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def migrate(url: str, dims: int) -> None:
    env = {**os.environ, "DATABASE_URL": url, "EMBEDDING_DIMENSIONS": str(dims)}
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        capture_output=True,
    )


async def reset_rows(url: str, rows: int, *, index: bool) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("TRUNCATE messages CASCADE")
        for vector_index in VECTOR_INDEXES:
            await conn.execute(f"DROP INDEX IF EXISTS {vector_index.name}")
        if index:
            await conn.execute(VECTOR_INDEXES[0].create_sql.replace(" CONCURRENTLY", ""))
        await conn.execute(
            "INSERT INTO messages (id, author, channel, content, sent_at) SELECT gen_random_uuid(), "
            "'a', 'c' || (g % 10), 'benchmark message number ' || g, now() FROM generate_series(1, $1) g",
            rows,
        )
        await conn.execute("VACUUM ANALYZE messages")
    finally:
        await conn.close()


async def current_count(conn: asyncpg.Connection) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM messages WHERE embedding_content_hash = content_hash"
        )
    )


async def ours(
    url: str, settings: Settings, stub_url: str, rows: int, dims: int, workers: int, stream: str
) -> Rate:
    """Through the real queue and worker processes."""
    from app.db import create_engine
    from app.services.backfill_service import BackfillPlan, run_backfill
    from app.services.entities import MESSAGES
    from app.tasks.broker import build_broker, worker_seen
    from app.tasks.embedding_tasks import enqueuer

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
    }
    children: list[Child] = [worker_child(env, "--no-sweeper") for _ in range(workers)]
    broker = build_broker(settings.model_copy(update={"nats_stream": stream}))
    engine = create_engine(url=to_asyncpg_url(url), settings=settings, pool_size=2)
    conn = await asyncpg.connect(url)
    try:
        for child in children:
            child.start()
        await broker.startup()
        while not await worker_seen(broker):
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # every worker pulling
        began = time.perf_counter()
        await run_backfill(
            engine, BackfillPlan(entities=[MESSAGES], page_size=500), enqueue=enqueuer(None, broker)
        )
        while await current_count(conn) < rows:
            await asyncio.sleep(0.05)
        return Rate(
            f"ours, {workers} worker process{'es' if workers > 1 else ''}",
            rows,
            time.perf_counter() - began,
        )
    finally:
        await conn.close()
        await broker.shutdown()
        await engine.dispose()
        stop_all(children)


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
                body = (
                    await client.post(
                        "/embeddings",
                        json={"model": "text-embedding-3-small", "input": item["content"]},
                    )
                ).json()
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


async def run(
    settings: Settings,
    url: str,
    *,
    rows: int,
    dims: int,
    workers: tuple[int, ...] = (1, 2),
    naive_rows: int = 2000,
    index: bool = False,
) -> list[Rate]:
    """Every system on the same table shape, one after the other, in this run."""
    import uuid

    from app.core import endpoints

    settings = settings.model_copy(update={"nats_url": endpoints.nats_url(settings)})
    migrate(url, dims)
    stub, stub_url = start_stub(dims)
    results = []
    try:
        for count in workers:
            await reset_rows(url, rows, index=index)
            stream = f"bench{uuid.uuid4().hex[:8]}"
            results.append(await ours(url, settings, stub_url, rows, dims, count, stream))
        await reset_rows(url, naive_rows, index=index)
        results.append(await naive(url, stub_url, naive_rows))
        await reset_rows(url, rows, index=index)
        results.append(await raw_write(url, rows, dims))
    finally:
        stub.terminate()
        stub.wait(10)
    return results
