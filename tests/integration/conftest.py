"""Fixtures shared by the integration tests: a pipeline = database + NATS stream + stub + workers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.broker import build_broker
from app.core.config import Settings
from app.core.urls import nats_servers, to_asyncpg_url
from app.embedding.entities import Entity
from app.embedding.queue import PendingFilter, pending_pages, publish
from app.embedding.tasks import enqueuer
from testkit.launchers import WorkerProcess
from testkit.stubs.openai_stub import OpenAIStub

DIMS = 384


@dataclass
class Pipeline:
    db_url: str
    engine: AsyncEngine
    env: dict[str, str]
    stub: OpenAIStub
    tmp: Path
    workers: list[WorkerProcess]

    def worker(self, *args: str) -> WorkerProcess:
        worker = WorkerProcess(self.env, self.tmp / f"worker-{len(self.workers)}.log", args).start()
        self.workers.append(worker)
        return worker

    def settings(self) -> Settings:
        return Settings(nats_url=self.env["NATS_URL"], nats_stream=self.env["NATS_STREAM"])

    async def enqueue_all(self, *entities: Entity) -> None:
        """What the backfill does: every pending row, in pages, published to the worker's stream."""
        broker = build_broker(self.settings())
        await broker.startup()
        try:
            for entity in entities:
                async for ids in pending_pages(self.engine, entity, PendingFilter(), page_size=100):
                    await publish(self.engine, enqueuer(None, broker), entity, ids, batch_size=100)
        finally:
            await broker.shutdown()

    async def counts(self, table: str) -> tuple[int, int]:
        """(rows, rows whose embedding is current)."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        f"SELECT count(*), count(*) FILTER (WHERE embedding IS NOT NULL "
                        f"AND embedding_content_hash = content_hash) FROM {table}"
                    )
                )
            ).one()
        return int(row[0]), int(row[1])

    async def wait_queue_drained(self, timeout: float = 60.0) -> None:
        """Until the workers' durable consumer has nothing pending nor unacknowledged."""
        import nats

        client = await nats.connect(nats_servers(self.env["NATS_URL"]))
        stream = self.env["NATS_STREAM"]
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                info = await client.jetstream().consumer_info(stream, f"{stream}-worker")
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    return
                await asyncio.sleep(0.1)
        finally:
            await client.close()
        raise AssertionError(f"the stream {stream} still has work after {timeout}s")

    async def wait_for(self, sql: str, timeout: float = 60.0) -> None:
        """Until `sql` returns true."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            async with self.engine.connect() as conn:
                if (await conn.execute(text(sql))).scalar():
                    return
            await asyncio.sleep(0.1)
        raise AssertionError(f"not true within {timeout}s: {sql}")

    async def wait_current(self, table: str, expected: int, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (await self.counts(table))[1] >= expected:
                return
            await asyncio.sleep(0.2)
        logs = "\n".join(w.output()[-3000:] for w in self.workers)
        raise AssertionError(f"{table}: {await self.counts(table)} after {timeout}s\n{logs}")


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(dims=DIMS, api_key="test-key") as server:
        yield server


@pytest.fixture
async def pipeline(
    make_db: Callable[[], str], nats_url: str, stub: OpenAIStub, tmp_path: Path
) -> AsyncIterator[Pipeline]:
    db_url = make_db()
    env = {
        "DATABASE_URL": db_url,
        "NATS_URL": nats_url,
        "NATS_STREAM": f"t{uuid.uuid4().hex[:10]}",
        "NATS_ACK_WAIT_SECONDS": "5",
        "EMBEDDING_PROVIDER": "openai",
        "EMBEDDING_MODEL": "text-embedding-3-small",
        "EMBEDDING_BASE_URL": stub.base_url,
        "EMBEDDING_API_KEY": "test-key",
        "EMBEDDING_DIMENSIONS": str(DIMS),
        "EMBEDDING_BATCH_SIZE": "100",
        "TASK_BATCH_SIZE": "100",
        "SWEEPER_INTERVAL_SECONDS": "1",
        "SWEEPER_GRACE_SECONDS": "2",
        "SWEEPER_REQUEUE_SECONDS": "30",
        "DATA_DIR": str(tmp_path / "data"),
    }
    engine = create_async_engine(to_asyncpg_url(db_url), pool_size=3)
    state = Pipeline(db_url, engine, env, stub, tmp_path, [])
    yield state
    for worker in state.workers:
        worker.stop()
    await engine.dispose()


REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`tasktracker ARGS` as a user runs it, from the project root, with `env` over this
    process's environment (its DATABASE_URL / NATS_URL left out: `env` names the servers)."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=REPO,
        env={
            **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL")},
            **env,
        },
        capture_output=True,
        text=True,
        timeout=timeout,
    )


async def insert_messages(engine: AsyncEngine, count: int, prefix: str = "message") -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO messages (id, author, channel, content, sent_at) SELECT gen_random_uuid(), "
                "'author', 'c' || (g % 5), :prefix || ' number ' || g || ' about deploys', now() "
                "FROM generate_series(1, :n) g"
            ),
            {"n": count, "prefix": prefix},
        )


async def insert_atoms(engine: AsyncEngine, count: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO atoms (id, type, title, content, confidence, fingerprint) SELECT "
                "gen_random_uuid(), 'problem', 'Atom ' || g, 'Content of atom ' || g, 0.7, 'fp' || g "
                "FROM generate_series(1, :n) g"
            ),
            {"n": count},
        )
