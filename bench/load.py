"""Load: a mixed workload against the API while the worker embeds, for minutes, memory sampled.

The API (uvicorn, its own process) and the worker (`tasktracker worker`, sweeper on) run against
a scratch database of messages preloaded with embeddings and the HNSW index; each has its own
OpenAI-compatible stub process with a small realistic latency. Async httpx clients in this
process, one keep-alive connection each, send requests back to back: search (80%), ingest of
one message, whose embedding the API queues (15%), and the embedding status (5%). Every second
the resident memory (VmRSS) of the API and the worker, the rows waiting for an embedding and
the stubs' request counters are sampled. When the load stops, the worker is given time to
finish; then the rows are checked: every row current, and every text version embedded exactly
once (a trigger made by this benchmark logs every embedding write).

`bench.faults` runs the same stack with a fault in the middle.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import random
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg
import httpx

from app.core import endpoints
from app.core.config import Settings
from app.core.embedded import free_port
from app.core.supervisor import Child, api_child, stop_all, worker_child
from app.embedding.entities import NEEDS_TEXT
from bench.api import (
    PHRASES,
    REQUEST_TIMEOUT,
    SEARCH_LIMIT,
    SEARCH_PATH,
    Provider,
    Queries,
    api_env,
    bench_headers,
    delete_stream,
    load_messages,
    wait_ready,
)
from bench.pipeline import migrate, start_stub
from bench.scratch import scratch_database
from bench.stats import Spread, latency_summary, target

DIMS = 384
MODEL = "text-embedding-3-small"
PROVIDER = Provider("stub", "stub", DIMS)
ROUTES = ("search", "ingest", "status")
MIX = (("search", 0.80), ("ingest", 0.15), ("status", 0.05))
INGEST_PATH = "/api/v1/messages"
STATUS_PATH = "/api/v1/embeddings/status"
READY_PATH = "/api/v1/health/ready"
NOT_QUEUED = "ok, not queued"  # an ingest stored, its embedding left to the sweeper
# After a failed request a client waits this long, as a real one would (a down API answers
# 503s at once; without a pause the clients would spin).
ERROR_PAUSE = 0.1
MEMORY_TOLERANCE = 0.10
# What is measured is behaviour under load, not the limits: every rate limit is off.
LIMITS_OFF = {
    "RATE_LIMIT_SEARCH_PER_MINUTE": "0",
    "RATE_LIMIT_EMBED_NOW_PER_MINUTE": "0",
    "RATE_LIMIT_EXTRACT_PER_MINUTE": "0",
}
PENDING_SQL = f"SELECT count(*) FROM messages WHERE {NEEDS_TEXT}"


@dataclass(frozen=True)
class StackConfig:
    """The stubs' latency and the worker's sweeper timings."""

    stub_latency_ms: float = 30.0
    stub_jitter_ms: float = 10.0
    sweeper_interval_seconds: float = 5.0
    sweeper_grace_seconds: float = 10.0
    sweeper_requeue_seconds: float = 60.0
    log_level: str = "WARNING"


@dataclass(frozen=True)
class LoadPlan:
    """Sizes and durations of one load run."""

    seconds: float = 300.0
    warmup: float = 10.0
    clients: int = 32
    rows: int = 5_000
    clusters: int = 50
    memory_window: float = 60.0  # first and last window of the measured time compared
    drain_timeout: float = 180.0
    stack: StackConfig = StackConfig()


FULL = LoadPlan()
QUICK = LoadPlan(seconds=60.0, warmup=5.0, rows=2_000, memory_window=20.0, drain_timeout=120.0)


class Done(NamedTuple):
    """One completed request: when (stack seconds), which route, how long, what came back."""

    at: float
    route: str
    ms: float
    result: str  # "ok", NOT_QUEUED, an HTTP status ("503") or an exception name

    @property
    def ok(self) -> bool:
        return self.result.startswith("ok")


# ----------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    """The API, the worker and their stubs, running; times are seconds since `t0`."""

    db_url: str  # libpq
    nats_url: str
    stream: str
    base: str
    headers: dict[str, str]
    api: Child
    worker: Child
    stubs: dict[str, str]  # "api" / "worker" -> the stub's root URL
    t0: float = field(default_factory=time.monotonic)
    wall0: float = field(default_factory=time.time)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def wall(self, at: float) -> float:
        """Epoch seconds of stack time `at` (to compare with timestamps Postgres wrote)."""
        return self.wall0 + at

    def at(self, epoch: float) -> float:
        return epoch - self.wall0


def worker_env(
    db_url: str, nats_url: str, stream: str, stub_url: str, config: StackConfig
) -> dict[str, str]:
    """The worker's environment: the same database, stream and model as the API."""
    return {
        "DATABASE_URL": db_url,
        "NATS_URL": nats_url,
        "NATS_STREAM": stream,
        "EMBEDDING_PROVIDER": "openai",
        "EMBEDDING_MODEL": MODEL,
        "EMBEDDING_BASE_URL": stub_url,
        "EMBEDDING_API_KEY": "bench",
        "EMBEDDING_DIMENSIONS": str(DIMS),
        "SWEEPER_INTERVAL_SECONDS": str(config.sweeper_interval_seconds),
        "SWEEPER_GRACE_SECONDS": str(config.sweeper_grace_seconds),
        "SWEEPER_REQUEUE_SECONDS": str(config.sweeper_requeue_seconds),
        "LOG_LEVEL": config.log_level,
    }


@asynccontextmanager
async def start_stack(db_url: str, nats_url: str, config: StackConfig) -> AsyncIterator[Stack]:
    """Stubs, API and worker as processes, ready (a search answered, an ingest embedded);
    everything stopped afterwards, also on error."""
    stream = f"benchload{uuid.uuid4().hex[:8]}"
    stubs: dict[str, tuple[subprocess.Popen[str], str]] = {}
    children: list[Child] = []
    try:
        latency = (
            "--latency-ms",
            str(config.stub_latency_ms),
            "--jitter-ms",
            str(config.stub_jitter_ms),
        )
        for name in ("api", "worker"):
            stubs[name] = start_stub(DIMS, *latency)
        env = {**api_env(db_url, nats_url, stream, PROVIDER, stubs["api"][1]), **LIMITS_OFF}
        env["LOG_LEVEL"] = config.log_level
        port = free_port()
        api = api_child(env, "127.0.0.1", port, "--no-access-log", "--log-level", "warning")
        worker = worker_child(worker_env(db_url, nats_url, stream, stubs["worker"][1], config))
        children = [api, worker]
        for child in children:
            child.start()
        base = f"http://127.0.0.1:{port}"
        headers = await bench_headers(db_url, "write")  # ingest needs write; it covers search
        await wait_ready(base, headers, api)
        roots = {name: url.removesuffix("/v1") for name, (_, url) in stubs.items()}
        stack = Stack(db_url, nats_url, stream, base, headers, api, worker, roots)
        await wait_embedding(stack)
        stack.t0, stack.wall0 = time.monotonic(), time.time()
        yield stack
    finally:
        stop_all(children)
        for process, _ in stubs.values():
            process.terminate()
            process.wait(10)
        with suppress(Exception):  # NATS may be the thing a fault run left down
            await delete_stream(nats_url, stream)


async def wait_embedding(stack: Stack, timeout: float = 120.0) -> None:
    """Ingest one message through the API and wait until the worker has embedded it."""
    async with httpx.AsyncClient(base_url=stack.base, headers=stack.headers, timeout=30) as http:
        response = await http.post(INGEST_PATH, json=_message("warm-up", 0))
        response.raise_for_status()
    conn = await asyncpg.connect(stack.db_url)
    try:
        deadline = time.monotonic() + timeout
        while await conn.fetchval(PENDING_SQL):
            if stack.worker.exited() is not None:
                raise RuntimeError(f"the worker process exited with {stack.worker.exited()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not embed a message in {timeout:.0f}s")
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


# ----------------------------------------------------------------------------- data


async def prepare(url: str) -> int:
    """Mark the preloaded rows current for the stub's model, and log every embedding write from
    now on into bench_embed_log (a trigger of this benchmark, not a migration). Returns rows."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            f"UPDATE messages SET embedding_model = '{MODEL}', embedded_at = now(), "
            "embedding_queued_at = NULL WHERE embedding IS NOT NULL"
        )
        await conn.execute(
            "DROP TABLE IF EXISTS bench_preloaded, bench_embed_log;"
            "CREATE TABLE bench_preloaded AS SELECT id FROM messages;"
            "ALTER TABLE bench_preloaded ADD PRIMARY KEY (id);"
            "CREATE TABLE bench_embed_log (id uuid NOT NULL, content_hash text, "
            "  at timestamptz NOT NULL DEFAULT clock_timestamp());"
            "CREATE OR REPLACE FUNCTION bench_log_embedding() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN INSERT INTO bench_embed_log (id, content_hash) "
            "VALUES (NEW.id, NEW.embedding_content_hash); RETURN NULL; END $$;"
            "DROP TRIGGER IF EXISTS bench_log_embedding ON messages;"
            "CREATE TRIGGER bench_log_embedding AFTER UPDATE ON messages FOR EACH ROW "
            "WHEN (NEW.embedding IS NOT NULL AND (NEW.embedded_at IS DISTINCT FROM OLD.embedded_at "
            "OR NEW.embedding_content_hash IS DISTINCT FROM OLD.embedding_content_hash)) "
            "EXECUTE FUNCTION bench_log_embedding();"
        )
        await conn.execute("VACUUM ANALYZE messages")  # not in the script: its own transaction
        return int(await conn.fetchval("SELECT count(*) FROM messages"))
    finally:
        await conn.close()


async def written_once(url: str) -> dict[str, Any]:
    """Coverage, and whether every text version of every row was embedded exactly once: each
    new row's current (id, content_hash) appears once in the log, preloaded rows never."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM messages) AS rows, "
            "(SELECT count(*) FROM messages WHERE embedding IS NOT NULL "
            " AND embedding_content_hash = content_hash) AS current, "
            "(SELECT count(*) FROM bench_preloaded) AS preloaded, "
            "(SELECT count(*) FROM bench_embed_log) AS writes, "
            "(SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM bench_embed_log "
            " GROUP BY id, content_hash) AS g) AS extra_writes, "
            "(SELECT count(*) FROM messages m WHERE NOT EXISTS (SELECT 1 FROM bench_preloaded p "
            " WHERE p.id = m.id) AND NOT EXISTS (SELECT 1 FROM bench_embed_log l "
            " WHERE l.id = m.id AND l.content_hash = m.content_hash)) AS missing, "
            "(SELECT count(*) FROM bench_embed_log l JOIN bench_preloaded p USING (id)) "
            " AS preloaded_rewritten"
        )
    finally:
        await conn.close()
    assert row is not None
    figures: dict[str, Any] = {key: int(value) for key, value in row.items()}
    figures["coverage_pct"] = (
        round(100.0 * figures["current"] / figures["rows"], 3) if figures["rows"] else 100.0
    )
    figures["exactly_once"] = (
        figures["extra_writes"] == 0
        and figures["missing"] == 0
        and figures["preloaded_rewritten"] == 0
    )
    return figures


class Db:
    """One connection for polling, reopened after the server went away; None while it is."""

    def __init__(self, url: str):
        self.url = url
        self.conn: asyncpg.Connection | None = None

    async def value(self, sql: str, *args: Any) -> Any:
        try:
            if self.conn is None or self.conn.is_closed():
                self.conn = await asyncpg.connect(self.url, timeout=2)
            return await self.conn.fetchval(sql, *args, timeout=5)
        except Exception:  # noqa: BLE001 - whatever the server going away raises
            await self.close()
            return None

    async def close(self) -> None:
        if self.conn is not None:
            with suppress(Exception):
                await self.conn.close()
            self.conn = None


# ----------------------------------------------------------------------------- load


def _message(author: str, number: int) -> dict[str, str]:
    phrase = PHRASES[number % len(PHRASES)]
    return {
        "author": author,
        "channel": f"c{number % 10}",
        "content": f"load message {number} {uuid.uuid4().hex[:8]}: {phrase}",
    }


def pick_route(rng: random.Random) -> str:
    draw, total = rng.random(), 0.0
    for route, share in MIX:
        total += share
        if draw < total:
            return route
    return MIX[-1][0]


async def _request(http: httpx.AsyncClient, route: str, queries: Queries, number: int) -> str:
    """One request of `route`; "ok" (or NOT_QUEUED), else its status or exception name."""
    try:
        if route == "search":
            response = await http.post(
                SEARCH_PATH, json={"query": queries.next(), "limit": SEARCH_LIMIT}
            )
        elif route == "ingest":
            response = await http.post(INGEST_PATH, json=_message("load", number))
        else:
            response = await http.get(STATUS_PATH)
    except httpx.HTTPError as exc:
        return type(exc).__name__
    if not response.is_success:
        return str(response.status_code)
    if route == "ingest" and '"embedding":"queued"' not in response.text.replace(" ", ""):
        return NOT_QUEUED
    return "ok"


def dedicated_routes(clients: int) -> list[str]:
    """One route per client, in the mix's shares (at least one client each)."""
    counts = {route: max(1, round(clients * share)) for route, share in MIX[1:]}
    counts = {MIX[0][0]: clients - sum(counts.values()), **counts}
    return [route for route, n in counts.items() for _ in range(n)]


async def drive(
    stack: Stack,
    clients: int,
    stop: asyncio.Event,
    done: list[Done],
    *,
    dedicated: bool = False,
    seed: int = 0,
) -> None:
    """`clients` clients back to back until `stop`; each completion into `done`. Each request
    draws its route from the mix, or (`dedicated`) each client keeps to one route, so a route
    that stalls (search while the provider is down) does not starve the others."""
    queries = Queries(cached=False)  # shared: every search text is distinct (cache misses)
    numbers = itertools.count(1)
    fixed = dedicated_routes(clients) if dedicated else None

    async def client(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        async with httpx.AsyncClient(
            base_url=stack.base, headers=stack.headers, timeout=REQUEST_TIMEOUT
        ) as http:
            while not stop.is_set():
                route = pick_route(rng) if fixed is None else fixed[index]
                began = time.monotonic()
                result = await _request(http, route, queries, next(numbers))
                ended = time.monotonic()
                done.append(Done(ended - stack.t0, route, (ended - began) * 1000, result))
                if not result.startswith("ok"):
                    await asyncio.sleep(ERROR_PAUSE)

    await asyncio.gather(*(client(i) for i in range(clients)))


def rss_mb(pid: int | None) -> float | None:
    """Resident memory of a process (VmRSS), in MiB; None if it is gone."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 2)
    except OSError:
        return None
    return None


async def _stub_requests(http: httpx.AsyncClient, root: str) -> int | None:
    try:
        response = await http.get(f"{root}/_stub/stats", params={"brief": "1"})
        return int(response.json()["requests"])
    except (httpx.HTTPError, ValueError, KeyError):
        return None


async def sample(
    stack: Stack, stop: asyncio.Event, timeline: list[dict[str, Any]], every: float = 1.0
) -> None:
    """Every second until `stop`: RSS of the API and the worker, rows pending, stub requests."""
    db = Db(stack.db_url)
    try:
        async with httpx.AsyncClient(timeout=2) as http:
            while not stop.is_set():
                point: dict[str, Any] = {
                    "t": round(stack.now(), 2),
                    "api_rss_mb": rss_mb(stack.api.pid),
                    "worker_rss_mb": rss_mb(stack.worker.pid),
                    "pending": await db.value(PENDING_SQL),
                }
                for name, root in stack.stubs.items():
                    point[f"stub_{name}_requests"] = await _stub_requests(http, root)
                timeline.append(point)
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), every)
    finally:
        await db.close()


async def drain(stack: Stack, timeout: float) -> float | None:
    """Seconds until no row is pending (the load has stopped); None if not within `timeout`."""
    db = Db(stack.db_url)
    began = time.monotonic()
    try:
        while time.monotonic() - began < timeout:
            if await db.value(PENDING_SQL) == 0:
                return round(time.monotonic() - began, 2)
            await asyncio.sleep(0.5)
        return None
    finally:
        await db.close()


# ----------------------------------------------------------------------------- figures


def route_figures(done: Sequence[Done], start: float, end: float) -> dict[str, dict[str, Any]]:
    """Per route (and all together) over [start, end): counts, rates, latency of successes,
    errors by kind, 5xx."""
    seconds = max(end - start, 1e-9)
    window = [d for d in done if start <= d.at < end]
    out: dict[str, dict[str, Any]] = {}
    for route in (*ROUTES, "all"):
        mine = [d for d in window if route in ("all", d.route)]
        errors = Counter(d.result for d in mine if not d.ok)
        ok_ms = [d.ms for d in mine if d.ok]
        out[route] = {
            **latency_summary(ok_ms),
            "requests": len(mine),
            "requests_per_second": round(len(ok_ms) / seconds, 2),
            "errors": errors.total(),
            "server_errors": sum(n for kind, n in errors.items() if kind.startswith("5")),
            "error_kinds": dict(errors),
            "not_queued": sum(d.result == NOT_QUEUED for d in mine),
        }
    return out


def throughput(done: Sequence[Done], start: float, end: float) -> list[dict[str, Any]]:
    """Successful requests per second and route, and failures, second by second."""
    seconds = [
        {"t": float(s), **dict.fromkeys(ROUTES, 0), "errors": 0}
        for s in range(int(start), int(end) + 1)
    ]
    first = int(start)
    for d in done:
        index = int(d.at) - first
        if 0 <= index < len(seconds):
            seconds[index][d.route if d.ok else "errors"] += 1
    return seconds


def memory(
    timeline: Sequence[dict[str, Any]], start: float, end: float, window: float
) -> dict[str, Any]:
    """Median RSS of the first and the last `window` seconds of [start, end], per process."""
    out: dict[str, Any] = {"window_seconds": window}
    for name in ("api", "worker"):
        key = f"{name}_rss_mb"

        def values(lo: float, hi: float, key: str = key) -> list[float]:
            return [p[key] for p in timeline if lo <= p["t"] < hi and p[key] is not None]

        first, last = Spread.of(values(start, start + window)), Spread.of(values(end - window, end))
        every = values(start, end)
        out[name] = {
            "first_mb": round(first.median, 1),
            "last_mb": round(last.median, 1),
            "ratio": round(last.median / first.median, 4) if first.median else None,
            "peak_mb": round(max(every), 1) if every else None,
            "samples": len(every),
        }
    return out


def stack_config(config: StackConfig) -> dict[str, Any]:
    return {
        **asdict(config),
        "dims": DIMS,
        "model": MODEL,
        "rate_limits": "all off (RATE_LIMIT_*_PER_MINUTE=0)",
        "mix": dict(MIX),
        "request_timeout_seconds": REQUEST_TIMEOUT,
    }


async def measure(url: str, nats_url: str, plan: LoadPlan) -> dict[str, Any]:
    """The load run on `url` (migrated, messages loaded): load, drain, check."""
    rows = await prepare(url)
    async with start_stack(url, nats_url, plan.stack) as stack:
        done: list[Done] = []
        timeline: list[dict[str, Any]] = []
        stop_load, stop_sampling = asyncio.Event(), asyncio.Event()
        sampler = asyncio.create_task(sample(stack, stop_sampling, timeline))
        began = stack.now()
        driver = asyncio.create_task(drive(stack, plan.clients, stop_load, done))
        try:
            await asyncio.sleep(plan.warmup + plan.seconds)
        finally:
            stop_load.set()
            await driver
        start, end = began + plan.warmup, began + plan.warmup + plan.seconds
        drained = await drain(stack, plan.drain_timeout)
        stop_sampling.set()
        await sampler
        check = await written_once(url)
    return {
        "preloaded_rows": rows,
        "routes": route_figures(done, start, end),
        "window": {
            "start": round(start, 2),
            "end": round(end, 2),
            "load_ended": round(stack.now(), 2),
        },
        "throughput": throughput(done, began, end),
        "timeline": timeline,
        "memory": memory(timeline, start, end, plan.memory_window),
        "drain_seconds": drained,
        "check": check,
    }


async def run(settings: Settings, *, quick: bool) -> dict[str, Any]:
    """A scratch database with preloaded embedded messages; the shared NATS, a stream of its own."""
    plan = QUICK if quick else FULL
    async with scratch_database(settings, "tasktracker_bench_load") as url:
        await asyncio.to_thread(migrate, url, DIMS)
        await load_messages(url, plan.rows, DIMS, plan.clusters)
        figures = await measure(url, endpoints.ensure_nats_url(settings), plan)
    config = {**asdict(plan), **stack_config(plan.stack), "quick": quick}
    return {"config": config, **figures}


# ----------------------------------------------------------------------------- report


def targets(section: dict[str, Any]) -> list[dict[str, Any]]:
    """Zero 5xx, search p95 reported, memory flat, coverage 100% with each version once."""
    routes, check, clients = section["routes"], section["check"], section["config"]["clients"]
    minutes = section["config"]["seconds"] / 60
    search = routes["search"]
    rows = [
        target(
            f"Load: {clients} clients, {minutes:g} min, mixed routes",
            "zero 5xx; search p95 reported",
            f"{routes['all']['server_errors']} 5xx of {routes['all']['requests']:,} requests; "
            f"search p95 {search['p95_ms']:,.0f} ms at {search['requests_per_second']:,.1f} req/s",
            routes["all"]["server_errors"] == 0 and search["count"] > 0,
        )
    ]
    for name, label in (("api", "API"), ("worker", "worker")):
        mem = section["memory"][name]
        window = section["memory"]["window_seconds"]
        rows.append(
            target(
                f"Load: {label} memory flat",
                f"last {window:g} s within {MEMORY_TOLERANCE:.0%} of the first",
                f"{mem['first_mb']:,.0f} -> {mem['last_mb']:,.0f} MiB (x{mem['ratio'] or 0:.3f})",
                _flat(mem),
            )
        )
    rows.append(
        target(
            "Load: coverage at the end",
            "100%, every text version embedded once",
            f"{check['coverage_pct']:g}% of {check['rows']:,} rows; {check['extra_writes']} repeated, "
            f"{check['missing']} missing writes",
            check["coverage_pct"] == 100.0 and check["exactly_once"],
        )
    )
    return rows


def _flat(mem: dict[str, Any]) -> bool:
    return mem["ratio"] is not None and abs(mem["ratio"] - 1) <= MEMORY_TOLERANCE


def route_table(routes: dict[str, dict[str, Any]], label: str | None = None) -> list[str]:
    """Markdown rows: route, requests, req/s, p50/p95/p99, errors (5xx) and their kinds."""
    lines = []
    for route in (*ROUTES, "all"):
        r = routes[route]
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted(r["error_kinds"].items())) or "-"
        cells = [label] if label is not None else []
        cells += [
            route,
            f"{r['requests']:,}",
            f"{r['requests_per_second']:,.1f}",
            f"{r['p50_ms']:,.1f}",
            f"{r['p95_ms']:,.1f}",
            f"{r['p99_ms']:,.1f}",
            f"{r['errors']} ({r['server_errors']})",
            kinds,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


ROUTE_HEADER = "| route | requests | ok/s | p50 ms | p95 ms | p99 ms | errors (5xx) | error kinds |"
ROUTE_RULE = "|---|---:|---:|---:|---:|---:|---:|---|"


def method(config: dict[str, Any]) -> str:
    """The stack every load and fault run uses, in words."""
    mix = ", ".join(f"{route} {share:.0%}" for route, share in config["mix"].items())
    return (
        "The API (uvicorn, one process) and the worker (`tasktracker worker`, sweeper on: interval "
        f"{config['sweeper_interval_seconds']:g} s, grace {config['sweeper_grace_seconds']:g} s, "
        f"requeue after {config['sweeper_requeue_seconds']:g} s) each call their own "
        f"OpenAI-compatible stub process ({config['stub_latency_ms']:g} ± "
        f"{config['stub_jitter_ms']:g} ms per request, {config['dims']} dims). Async httpx "
        f"clients, one keep-alive connection each, send requests back to back: {mix} "
        "(search: `POST /api/v1/semantic_search/messages`, a distinct query each time; ingest: "
        "`POST /api/v1/messages`, one new message whose embedding the API queues; status: "
        "`GET /api/v1/embeddings/status`), with a `write` bearer token; "
        f"rate limits {config['rate_limits']}; request timeout {config['request_timeout_seconds']:g} s; a "
        f"client pauses {ERROR_PAUSE * 1000:g} ms after a failed request. "
        "Every embedding write is logged by a trigger the benchmark adds, so the end state "
        "shows whether each (row, text version) was embedded exactly once."
    )


def render(section: dict[str, Any], plots: Path) -> str:
    """Method, per-route table, memory table, end state, the plot."""
    plots.mkdir(parents=True, exist_ok=True)
    _plot(section, plots / "load.png")
    c, check, drained = section["config"], section["check"], section["drain_seconds"]
    lines = [
        f"## Load: mixed workload at {c['clients']} clients",
        "",
        f"{section['preloaded_rows']:,} messages preloaded with embeddings (HNSW index); "
        f"{c['warmup']:g} s warm-up, then {c['seconds']:g} s measured. " + method(c),
        "",
        ROUTE_HEADER,
        ROUTE_RULE,
        *route_table(section["routes"]),
        "",
        f"Resident memory (VmRSS, sampled every second), median of the first and the last "
        f"{section['memory']['window_seconds']:g} s of the measured window:",
        "",
        "| process | first MiB | last MiB | last/first | peak MiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, label in (("api", "API"), ("worker", "worker")):
        m = section["memory"][name]
        lines.append(
            f"| {label} | {m['first_mb']:,.1f} | {m['last_mb']:,.1f} | {m['ratio'] or 0:.3f} | {m['peak_mb'] or 0:,.1f} |"
        )
    lines += [
        "",
        f"After the load stopped the worker needed "
        f"{'more than the timeout' if drained is None else f'{drained:g} s'} to leave no row "
        f"pending. End state: {check['rows']:,} rows, {check['current']:,} current "
        f"({check['coverage_pct']:g}%); {check['writes']:,} embedding writes logged for "
        f"{check['rows'] - check['preloaded']:,} new rows: {check['extra_writes']} repeated, "
        f"{check['missing']} missing, {check['preloaded_rewritten']} rewrites of preloaded rows.",
        "",
        "![Requests/s per route, RSS of the API and the worker, rows pending](bench/load.png)",
        "",
    ]
    return "\n".join(lines)


def pyplot() -> Any:
    # The optional `bench` group; by name, so mypy passes without it.
    importlib.import_module("matplotlib").use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def plot_series(axes: Sequence[Any], section: dict[str, Any]) -> None:
    """Requests/s per route, RSS, pending rows on three axes (shared by the fault plots)."""
    rate, rss, pending = axes
    seconds = section["throughput"]
    for route in (*ROUTES, "errors"):
        rate.plot(
            [s["t"] for s in seconds], [s[route] for s in seconds], label=route, linewidth=0.8
        )
    rate.set_ylabel("requests/s")
    timeline = section["timeline"]
    ts = [p["t"] for p in timeline]
    for name in ("api", "worker"):
        rss.plot(ts, [p[f"{name}_rss_mb"] for p in timeline], label=name)
    rss.set_ylabel("RSS MiB")
    pending.plot(ts, [p["pending"] for p in timeline], color="C3")
    pending.set_ylabel("rows pending")
    pending.set_xlabel("seconds")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    rate.legend(fontsize=7, ncol=4)
    rss.legend(fontsize=7)


def _plot(section: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(3, 1, figsize=(10, 7.5), sharex=True)
    plot_series(axes, section)
    window = section["window"]
    for ax in axes:
        ax.axvspan(window["start"], window["end"], color="C0", alpha=0.05)
    figure.suptitle(f"Load at {section['config']['clients']} clients (shaded: measured window)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
