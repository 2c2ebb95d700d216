"""`tasktracker bench workers`: pipeline rows/s with 1, 2 and 4 worker processes, against the
zero-latency stub (our overhead) and the realistic stub (100-300 ms, 5% 429s), and with two
workers on a 3-node JetStream cluster (R3 stream) beside one server; with every process's CPU
share (psutil), so the ceiling of the machine shows where it comes from.

Same path as bench/pipeline.py (rows in Postgres -> backfill -> JetStream -> worker
processes -> stub over HTTP -> vectors written back, timed from the first publish to 100%
coverage). Each round runs every variant once, interleaved. The figures go to
docs/bench/workers.json and into docs/SCALING.md between its `bench workers` markers, each
with the machine's load average (`uptime`): other agents share this machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

import asyncpg
import psutil

from app.core import endpoints
from app.core.config import REPO_ROOT, Settings
from app.core.nats_cluster import NatsCluster
from bench.pipeline import (
    current_count,
    machine_busy_seconds,
    migrate,
    pending_count,
    reset_rows,
    running_stub,
    started_workers,
)
from bench.scratch import scratch_database

DOCS = REPO_ROOT / "docs"
MARK_BEGIN, MARK_END = "<!-- bench workers -->", "<!-- /bench workers -->"
DIMS = 1536
REALISTIC = ("--latency-ms", "200", "--jitter-ms", "100", "--rate-429", "0.05")
PARTS = ("workers", "postgres", "nats", "stub", "bench", "other")


@dataclass(frozen=True)
class Variant:
    name: str
    workers: int
    stub: str  # "zero" or "realistic"
    cluster: bool = False
    task_rows: int = 500  # ids per task: the backfill's pages; 1 is the API's single ingest


def _plural(n: int) -> str:
    return f"{n} worker{'s' if n > 1 else ''}"


VARIANTS = (
    *(Variant(f"zero, {_plural(n)}", n, "zero") for n in (1, 2, 4)),
    *(Variant(f"realistic, {_plural(n)}", n, "realistic") for n in (1, 2, 4)),
    Variant("zero, 2 workers, 3-node cluster (R3)", 2, "zero", cluster=True),
    *(Variant(f"zero, 1-row tasks, {_plural(n)}", n, "zero", task_rows=1) for n in (1, 2, 4)),
)
ONE_ROW_TASKS = 3_000  # rows in the 1-row-task variants (one publish each)


@dataclass
class Run:
    """One timed backfill: rows/s, and each part's CPU as a share of the machine (% of all cores)."""

    variant: str
    rows: int
    seconds: float
    load: str  # `uptime`'s load averages when it ended
    cpu_share: dict[str, float] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children, living or reaped (Postgres' backends)."""
    try:
        process = psutil.Process(pid)
        times = process.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in process.children(recursive=True):
            try:
                child_times = child.cpu_times()
                total += child_times.user + child_times.system
            except psutil.Error:
                continue
        return float(total)
    except psutil.Error:
        return 0.0


async def postmaster_pid(url: str) -> int | None:
    """The local Postgres server's pid (the parent of a backend), None if it is not local."""
    conn = await asyncpg.connect(url)
    try:
        backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
        parent = psutil.Process(backend).parent()  # while the backend lives
    except psutil.Error:
        return None
    finally:
        await conn.close()
    return parent.pid if parent else None


def embedded_nats_pid(settings: Settings, nats_url: str) -> list[int]:
    """The embedded nats-server's pid when `nats_url` is it (else its CPU counts as other)."""
    state = settings.nats_dir / "server.json"
    if not state.exists():
        return []
    server = json.loads(state.read_text())
    return [int(server["pid"])] if f"127.0.0.1:{server['port']}" in nats_url else []


@dataclass
class Probe:
    """The processes whose CPU is read: by part."""

    pids: dict[str, list[int]]

    def snapshot(self) -> dict[str, float]:
        parts = {part: sum(tree_cpu(pid) for pid in pids) for part, pids in self.pids.items()}
        parts["bench"] = time.process_time()
        parts["machine"] = machine_busy_seconds()
        return parts

    @staticmethod
    def shares(
        before: dict[str, float], after: dict[str, float], seconds: float
    ) -> dict[str, float]:
        capacity = seconds * (os.cpu_count() or 1)
        used = {part: after[part] - before[part] for part in after}
        known = sum(value for part, value in used.items() if part != "machine")
        shares = {part: 100 * used[part] / capacity for part in used if part != "machine"}
        shares["other"] = 100 * max(0.0, used["machine"] - known) / capacity
        shares["idle"] = max(0.0, 100 - 100 * used["machine"] / capacity)
        return {part: round(value, 1) for part, value in shares.items()}


def worker_env(
    url: str, nats_url: str, stream: str, stub_url: str, replicas: int
) -> dict[str, str]:
    return {
        "DATABASE_URL": url,
        "NATS_URL": nats_url,
        "NATS_STREAM": stream,
        "NATS_STREAM_REPLICAS": str(replicas),
        "EMBEDDING_PROVIDER": "openai",
        "EMBEDDING_MODEL": "text-embedding-3-small",
        "EMBEDDING_BASE_URL": stub_url,
        "EMBEDDING_API_KEY": "bench",
        "EMBEDDING_DIMENSIONS": str(DIMS),
        "EMBEDDING_BATCH_SIZE": "500",
        "TASK_BATCH_SIZE": "500",
        "LOG_LEVEL": "WARNING",
    }


@asynccontextmanager
async def nats_for(
    settings: Settings, variant: Variant
) -> AsyncIterator[tuple[str, list[int], int]]:
    """(NATS_URL, its server pids, replicas): the shared server, or a 3-node cluster."""
    if not variant.cluster:
        url = endpoints.ensure_nats_url(settings)
        yield url, embedded_nats_pid(settings, url), 1
        return
    cluster = NatsCluster(3).start()
    try:
        pids = [node.process.pid for node in cluster.nodes if node.process is not None]
        yield cluster.url, pids, 3
    finally:
        cluster.stop()


async def publish_each(conn: asyncpg.Connection, enqueue: Any) -> None:
    """One task per row, 100 publishes in flight: what single-message ingest sends."""
    from app.embedding.entities import MESSAGES

    ids = [row["id"] for row in await conn.fetch("SELECT id FROM messages ORDER BY id")]
    for start in range(0, len(ids), 100):
        await asyncio.gather(*(enqueue(MESSAGES, [i]) for i in ids[start : start + 100]))


async def timed_backfill(
    settings: Settings, url: str, variant: Variant, stub: tuple[int, str], rows: int
) -> Run:
    """Start the workers, backfill every row, time it to 100% coverage, read the CPU."""
    from app.embedding.backfill import BackfillPlan, run_backfill
    from app.embedding.entities import MESSAGES
    from app.embedding.tasks import enqueuer

    stub_pid, stub_url = stub
    stream = f"benchw{uuid.uuid4().hex[:8]}"
    async with nats_for(settings, variant) as (nats_url, nats_pids, replicas):
        env = worker_env(url, nats_url, stream, stub_url, replicas)
        update = {"nats_url": nats_url, "nats_stream": stream, "nats_stream_replicas": replicas}
        async with started_workers(
            url, settings.model_copy(update=update), env, variant.workers, settle=2.0
        ) as running:
            postgres = await postmaster_pid(url)
            probe = Probe(
                {
                    "workers": running.pids,
                    "postgres": [postgres] if postgres else [],
                    "nats": nats_pids,
                    "stub": [stub_pid],
                }
            )
            before, began = probe.snapshot(), time.perf_counter()
            enqueue = enqueuer(None, running.broker)
            if variant.task_rows == 1:
                await publish_each(running.conn, enqueue)
            else:
                plan = BackfillPlan(entities=[MESSAGES], page_size=variant.task_rows)
                await run_backfill(running.engine, plan, enqueue=enqueue)
            while await pending_count(running.conn) > 0:
                await asyncio.sleep(0.05)
            seconds = time.perf_counter() - began
            shares = Probe.shares(before, probe.snapshot(), seconds)
            assert await current_count(running.conn) == rows, "every row's embedding is current"
            return Run(variant.name, rows, seconds, load_average(), shares)


async def run(settings: Settings, *, quick: bool) -> dict[str, Any]:
    """Every variant, `rounds` times interleaved; quick: 5,000 rows, one round. The 1-row-task
    variants embed ONE_ROW_TASKS rows (3,000) at most."""
    settings = settings.model_copy(update={"nats_url": endpoints.ensure_nats_url(settings)})
    rows, rounds = (5_000, 1) if quick else (20_000, 2)
    runs: list[Run] = []
    async with scratch_database(settings, "tasktracker_bench_workers") as url:
        migrate(url, DIMS)
        with (
            running_stub(DIMS) as (zero, zero_url),
            running_stub(DIMS, *REALISTIC) as (
                real,
                real_url,
            ),
        ):
            stubs = {"zero": (zero.pid, zero_url), "realistic": (real.pid, real_url)}
            for _ in range(rounds):
                for variant in VARIANTS:
                    count = min(rows, ONE_ROW_TASKS) if variant.task_rows == 1 else rows
                    await reset_rows(url, count, index=False)
                    stub = stubs[variant.stub]
                    runs.append(await timed_backfill(settings, url, variant, stub, count))
    return summarise(runs, rows=rows, rounds=rounds, quick=quick)


def summarise(runs: list[Run], *, rows: int, rounds: int, quick: bool) -> dict[str, Any]:
    by_variant: dict[str, list[Run]] = defaultdict(list)
    for item in runs:
        by_variant[item.variant].append(item)
    variants = []
    for name, items in by_variant.items():
        rates = [item.rows_per_second for item in items]
        variants.append(
            {
                "variant": name,
                "rows": items[0].rows,
                "rows_per_second": round(median(rates), 1),
                "range": [round(min(rates), 1), round(max(rates), 1)],
                "cpu_share_pct": {
                    part: round(median(item.cpu_share.get(part, 0.0) for item in items), 1)
                    for part in (*PARTS, "idle")
                },
                "load": [item.load for item in items],
            }
        )
    return {
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cores": os.cpu_count(),
        "rows": rows,
        "rounds": rounds,
        "quick": quick,
        "dims": DIMS,
        "variants": variants,
        "runs": [
            {**asdict(item), "rows_per_second": round(item.rows_per_second, 1)} for item in runs
        ],
    }


def render(figures: dict[str, Any]) -> str:
    """The Markdown table that goes between the markers of docs/SCALING.md."""
    out = [
        f"Measured {figures['measured_at']} by `tasktracker bench workers"
        f"{' --quick' if figures['quick'] else ''}`: {figures['dims']} dims, "
        f"{figures['rows']:,} rows per run in tasks of 500 (1-row tasks: see the rows column, "
        f"one task each, 100 publishes in flight), median of {figures['rounds']} round(s) with its range, on "
        f"{figures['cores']} cores shared with other agents (load average at the end of each "
        "run in the last column). CPU shares are % of all cores over the run (psutil: the "
        "worker processes, the Postgres server with its backends, nats-server, the stub, this "
        "benchmark process; other = the machine's busy time minus those).",
        "",
        "| variant | rows | rows/s | range | workers % | Postgres % | NATS % | stub % | bench % | "
        "other % | idle % | load (1/5/15 min) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for item in figures["variants"]:
        share = item["cpu_share_pct"]
        low, high = item["range"]
        out.append(
            f"| {item['variant']} | {item.get('rows', figures['rows']):,} | "
            f"{item['rows_per_second']:,.0f} | {low:,.0f}-{high:,.0f} | "
            + " | ".join(f"{share[p]:.0f}" for p in (*PARTS, "idle"))
            + f" | {'; '.join(item['load'])} |"
        )
    return "\n".join(out)


def write(figures: dict[str, Any]) -> Path:
    """docs/bench/workers.json, and the table into docs/SCALING.md between the markers."""
    (DOCS / "bench").mkdir(parents=True, exist_ok=True)
    (DOCS / "bench" / "workers.json").write_text(json.dumps(figures, indent=2) + "\n")
    doc = DOCS / "SCALING.md"
    text = doc.read_text()
    if MARK_BEGIN in text and MARK_END in text:
        head, rest = text.split(MARK_BEGIN, 1)
        _, tail = rest.split(MARK_END, 1)
        doc.write_text(f"{head}{MARK_BEGIN}\n{render(figures)}\n{MARK_END}{tail}")
    return doc
