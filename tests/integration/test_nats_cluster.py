"""A 3-node JetStream cluster, an R3 stream, two workers: the stream's leader is SIGKILLed in
the middle of a backfill, and the publishers and workers ride it out. Default worker settings
(sweeper, ack wait, leases): recovery comes from the reconnects and retries, not the sweeper.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import nats
import psutil
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.broker import build_broker
from app.core.config import Settings
from app.core.embedded import free_port
from app.core.nats_cluster import NatsCluster
from app.core.urls import nats_servers, to_asyncpg_url, to_libpq_url
from app.embedding.entities import MESSAGES
from app.embedding.queue import publish
from app.embedding.tasks import enqueuer
from testkit.stubs.openai_stub import OpenAIStub
from tests.integration.conftest import DIMS, Pipeline, insert_messages

pytestmark = pytest.mark.slow

ROWS = 3_000  # half queued before the kill, half published while the cluster elects a leader
PAGE = 50  # ids per task: 60 tasks, so most of them are in the stream when its leader dies

WRITE_LOG = """
CREATE TABLE embed_log (id uuid NOT NULL, content_hash text,
                        at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION log_embedding() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO embed_log (id, content_hash) VALUES (NEW.id, NEW.embedding_content_hash);
RETURN NULL; END $$;
CREATE TRIGGER log_embedding AFTER UPDATE ON messages FOR EACH ROW
WHEN (NEW.embedding IS NOT NULL AND (NEW.embedded_at IS DISTINCT FROM OLD.embedded_at
      OR NEW.embedding_content_hash IS DISTINCT FROM OLD.embedding_content_hash))
EXECUTE FUNCTION log_embedding();
"""
# Every row's current text version written exactly once, and nothing else written twice.
ONCE_SQL = """
SELECT (SELECT count(*) FROM messages m WHERE NOT EXISTS (SELECT 1 FROM embed_log l
          WHERE l.id = m.id AND l.content_hash = m.content_hash)) AS missing,
       (SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM embed_log
          GROUP BY id, content_hash) g) AS extra_writes
"""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with NatsCluster(3, tmp_path / "nats") as nodes:
        yield nodes


@pytest.fixture
async def cluster_pipeline(
    make_db: Callable[[], str], cluster: NatsCluster, stub: OpenAIStub, tmp_path: Path
) -> AsyncIterator[Pipeline]:
    db_url = make_db()
    env = {
        "DATABASE_URL": db_url,
        "NATS_URL": cluster.url,
        "NATS_STREAM": f"c{uuid.uuid4().hex[:10]}",
        "NATS_STREAM_REPLICAS": "3",
        "EMBEDDING_PROVIDER": "openai",
        "EMBEDDING_MODEL": "text-embedding-3-small",
        "EMBEDDING_BASE_URL": stub.base_url,
        "EMBEDDING_API_KEY": "test-key",
        "EMBEDDING_DIMENSIONS": str(DIMS),
        "DATA_DIR": str(tmp_path / "data"),
    }
    engine = create_async_engine(to_asyncpg_url(db_url), pool_size=3, pool_pre_ping=True)
    state = Pipeline(db_url, engine, env, stub, tmp_path, [])
    try:
        conn = await asyncpg.connect(to_libpq_url(db_url))
        try:
            await conn.execute(WRITE_LOG)
        finally:
            await conn.close()
        yield state
    finally:
        for worker in state.workers:
            worker.stop()
        await engine.dispose()


def _settings(pipeline: Pipeline) -> Settings:
    env = pipeline.env
    return Settings(
        nats_url=env["NATS_URL"], nats_stream=env["NATS_STREAM"], nats_stream_replicas=3
    )


async def _publish_new(pipeline: Pipeline, prefix: str) -> list[uuid.UUID]:
    """Publish the rows whose content starts with `prefix`; return the ids that failed."""
    async with pipeline.engine.connect() as conn:
        ids = list(
            (
                await conn.execute(
                    text("SELECT id FROM messages WHERE content LIKE :p ORDER BY id"),
                    {"p": f"{prefix} %"},
                )
            ).scalars()
        )
    broker = build_broker(_settings(pipeline))
    await broker.startup()
    try:
        _, failed = await publish(
            pipeline.engine, enqueuer(None, broker), MESSAGES, ids, batch_size=PAGE
        )
    finally:
        await broker.shutdown()
    return failed


async def _stream_leader(
    pipeline: Pipeline, not_on: str | None = None, timeout: float = 120.0
) -> tuple[str, int]:
    """(the stream's leader node, its replicas), once it has one (not `not_on`)."""
    client = await nats.connect(nats_servers(pipeline.env["NATS_URL"]))
    stream = pipeline.env["NATS_STREAM"]
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                info = await client.jetstream().stream_info(stream)
                if info.cluster is not None and info.cluster.leader not in (None, "", not_on):
                    return info.cluster.leader, int(info.config.num_replicas or 1)
            except Exception:  # noqa: BLE001, S110 - no leader yet: ask again
                pass
            assert time.monotonic() < deadline, f"the stream {stream} has no leader"
            await asyncio.sleep(0.1)
    finally:
        await client.close()


async def _elected(pipeline: Pipeline, killed: str, since: float) -> tuple[str, float]:
    """The new leader and the seconds from `since` until it led."""
    leader, _ = await _stream_leader(pipeline, not_on=killed)
    return leader, time.monotonic() - since


async def _longest_pause_after(engine: AsyncEngine, since: float) -> float:
    """The longest gap in embedding writes from `since` (epoch seconds) to the last write."""
    async with engine.connect() as conn:
        times = [since] + [
            float(t)
            for t in (
                await conn.execute(
                    text(
                        "SELECT extract(epoch FROM at) FROM embed_log "
                        "WHERE at >= to_timestamp(:since) ORDER BY at"
                    ),
                    {"since": since},
                )
            ).scalars()
        ]
    return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


async def test_losing_the_stream_leader_mid_backfill_loses_and_repeats_nothing(
    cluster_pipeline: Pipeline, cluster: NatsCluster
) -> None:
    pipeline = cluster_pipeline
    await insert_messages(pipeline.engine, ROWS // 2, prefix="before")
    pipeline.stub.set_latency(ms=500)  # a backfill that lasts long enough to be cut
    pipeline.worker()
    pipeline.worker()
    assert await _publish_new(pipeline, "before") == []
    leader, replicas = await _stream_leader(pipeline)
    assert replicas == 3
    deadline = time.monotonic() + 300
    while (await pipeline.counts("messages"))[1] < 300:
        assert time.monotonic() < deadline, "the backfill did not start"
        await asyncio.sleep(0.05)

    killed_at, killed_wall = time.monotonic(), time.time()
    cluster.node_named(leader).kill()
    election = asyncio.create_task(_elected(pipeline, leader, killed_at))
    await insert_messages(pipeline.engine, ROWS // 2, prefix="after")
    failed = await _publish_new(pipeline, "after")  # during the election
    new_leader, elected = await election
    await pipeline.wait_current("messages", ROWS, timeout=600)
    drained = time.monotonic() - killed_at
    pause = await _longest_pause_after(pipeline.engine, killed_wall)

    report = (
        f"killed {leader}; {new_leader} led the stream after {elected:.1f}s; longest pause "
        f"in embedding writes {pause:.1f}s; every row current {drained:.1f}s after the kill"
    )
    print(report)  # noqa: T201 - the recovery time is a figure the issue asks for
    assert failed == [], f"publishes given up during the election: {len(failed)}; {report}"
    assert new_leader != leader, report
    async with pipeline.engine.connect() as conn:
        missing, extra = (await conn.execute(text(ONCE_SQL))).one()
    assert (missing, extra) == (0, 0), f"missing {missing}, written twice {extra}; {report}"
    counts = pipeline.stub.stats()["text_counts"]
    twice = {t: n for t, n in counts.items() if n != 1}
    assert len(counts) == ROWS and not twice, f"{len(counts)} texts, twice: {list(twice)[:5]}"
    assert all(w.process is not None and w.process.poll() is None for w in pipeline.workers)


def _ours(data_dir: Path, needle: str) -> list[psutil.Process]:
    """Processes whose command line names `needle` and (for nats-server) the data folder."""
    found = []
    for process in psutil.process_iter(["cmdline", "environ"]):
        with contextlib.suppress(psutil.Error):
            cmdline = " ".join(process.info["cmdline"] or [])
            if needle not in cmdline:
                continue
            where = cmdline + " " + (process.info["environ"] or {}).get("DATA_DIR", "")
            if str(data_dir) in where:
                found.append(process)
    return found


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.3)


async def test_services_with_a_cluster_and_two_workers_starts_and_stops_them_all(
    make_db: Callable[[], str], stub: OpenAIStub, tmp_path: Path
) -> None:
    data_dir, port = tmp_path / "data", free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL")},
        "DATABASE_URL": make_db(),
        "DATA_DIR": str(data_dir),
        "NATS_STREAM": f"s{uuid.uuid4().hex[:10]}",
        "EMBEDDING_PROVIDER": "openai",
        "EMBEDDING_MODEL": "text-embedding-3-small",
        "EMBEDDING_BASE_URL": stub.base_url,
        "EMBEDDING_API_KEY": "test-key",
        "EMBEDDING_DIMENSIONS": str(DIMS),
    }
    argv = [sys.executable, "-m", "app.cli", "services", "--port", str(port)]
    services = subprocess.Popen(
        [*argv, "--nats-cluster", "3", "--workers", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

            async def ready() -> bool:
                assert services.poll() is None, services.stdout.read() if services.stdout else ""
                with contextlib.suppress(httpx.TransportError):
                    return (await client.get("/api/v1/health/ready")).status_code == 200
                return False

            await _until(ready, "the API did not become ready")
        nodes = _ours(data_dir, "nats-server")
        assert len(nodes) == 3, [p.info["cmdline"] for p in nodes]
        await _until(lambda: _true(len(_ours(data_dir, "app.cli worker")) == 2), "two workers", 60)
        urls = ",".join(f"nats://127.0.0.1:{_client_port(p)}" for p in nodes)
        client_nats = await nats.connect(nats_servers(urls))
        try:

            async def replicated() -> bool:
                with contextlib.suppress(Exception):
                    info = await client_nats.jetstream().stream_info(env["NATS_STREAM"])
                    return info.config.num_replicas == 3 and len(info.cluster.replicas or []) == 2
                return False

            await _until(replicated, "the stream is not R3 on the cluster", 60)
        finally:
            await client_nats.close()
        status = subprocess.run(
            [sys.executable, "-m", "app.cli", "services", "--status"],
            env={**env, "COLUMNS": "400"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert status.returncode == 0, status.stderr
        assert "cluster nats://" in status.stdout, status.stdout
        for node in nodes:
            assert f"127.0.0.1:{_client_port(node)}" in status.stdout, status.stdout
        assert "2 processes" in status.stdout, status.stdout
        os.killpg(services.pid, signal.SIGINT)
        assert services.wait(120) in (0, 130)
    finally:
        if services.poll() is None:
            os.killpg(services.pid, signal.SIGKILL)
            services.wait()
    await _until(
        lambda: _true(not _ours(data_dir, "nats-server") and not _ours(data_dir, "app.cli worker")),
        "nats nodes or workers left running",
        60,
    )


async def _true(value: bool) -> bool:
    return value


def _client_port(process: psutil.Process) -> str:
    cmdline = process.info["cmdline"]
    return str(cmdline[cmdline.index("-p") + 1])


async def test_with_nats_down_entirely_a_publish_gives_up_without_waiting_out_the_retries(
    tmp_path: Path,
) -> None:
    """The retries are for a cluster electing a leader; with no server at all the publisher
    leaves the rows to the sweeper about as soon as before (one request timeout)."""
    from taskiq import BrokerMessage

    from app.broker import PUBLISH_RETRY_SECONDS
    from app.core.embedded import NatsServer

    server = NatsServer(tmp_path / "nats")
    server.start()
    broker = build_broker(Settings(nats_url=server.url, nats_stream="down"))
    await broker.startup()
    try:
        server.stop()
        began = time.monotonic()
        with pytest.raises(Exception):  # noqa: B017, PT011 - nats raises its own family
            await broker.kick(BrokerMessage(task_id="t1", task_name="t", message=b"{}", labels={}))
        took = time.monotonic() - began
        assert took < PUBLISH_RETRY_SECONDS - 10, f"a publish to no server took {took:.1f}s"
    finally:
        await broker.shutdown()
        server.stop()


async def test_a_repeated_publish_is_dropped_and_a_retry_of_the_task_is_not(
    nats_url: str,
) -> None:
    """The message id is the task id and its retry count: JetStream drops a publish repeated
    after it landed (a retry across a failover), never the retry middleware's next attempt."""
    from taskiq import BrokerMessage

    stream = f"d{uuid.uuid4().hex[:10]}"
    broker = build_broker(Settings(nats_url=nats_url, nats_stream=stream))
    await broker.startup()
    try:
        first = BrokerMessage(task_id="t1", task_name="t", message=b"{}", labels={})
        retry = BrokerMessage(task_id="t1", task_name="t", message=b"{}", labels={"_retries": 1})
        for message in (first, first, retry, retry):
            await broker.kick(message)
        info = await broker.js.stream_info(stream)  # type: ignore[attr-defined]
        assert info.state.messages == 2
    finally:
        await broker.js.delete_stream(stream)  # type: ignore[attr-defined]
        await broker.shutdown()


def test_a_cluster_whose_port_was_taken_before_it_bound_starts_on_new_ports(
    tmp_path: Path,
) -> None:
    """The ports are picked free before the servers bind them; a port another process takes in
    between (here a listener held on a node's route port) kills that node, and the start goes
    again on new ports instead of failing."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        cluster = NatsCluster(3, tmp_path / "nats")
        cluster.nodes[2].cluster_port = taken
        with cluster:
            assert all(node.healthy() for node in cluster.nodes)
            assert taken not in {n.cluster_port for n in cluster.nodes}
            assert "address already in use" in (cluster.nodes[2].log.read_text())
            servers = [psutil.Process(node.process.pid) for node in cluster.nodes if node.process]
        assert len(servers) == 3
    # every server, those of the first attempt too, is gone: no nats-server of this folder is left
    psutil.wait_procs(servers, timeout=15)
    left = [
        proc.info["pid"]
        for proc in psutil.process_iter(["pid", "cmdline"])
        if str(tmp_path / "nats") in " ".join(proc.info["cmdline"] or ())
    ]
    assert not left, left
