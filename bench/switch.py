"""A model switch at size: 100,000 messages from 384 to 1536 dimensions, online.

API and worker run as processes (default settings but the provider: the zero-latency
OpenAI-compatible stub as its own process, 384 dims for the active space, 1536 through a
provider row for the target) over a scratch database of preloaded embedded messages with the
HNSW index. Measured: the fill's rows per second (switch started to no row left), the target's
HNSW build (CONCURRENTLY, its own note on the index), the time from the start to the cutover
done, and search latency through the API before the switch and while it runs (fill, index
build, cutover), with every failed search counted.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import asyncpg
import httpx

from app.core import endpoints
from app.core.config import REPO_ROOT, Settings
from app.core.embedded import free_port
from app.core.supervisor import Child, api_child, stop_all, worker_child
from bench.api import (
    PHRASES,
    SEARCH_PATH,
    api_env,
    bench_headers,
    delete_stream,
    load_messages,
    wait_ready,
)
from bench.freshness import STUB
from bench.pipeline import migrate, start_stub
from bench.scratch import scratch_database
from bench.stats import latency_summary, target

TARGET_DIMS = 1536
PROVIDER = "bench-1536"


@dataclass(frozen=True)
class Plan:
    rows: int
    searches_before: int


FULL = Plan(rows=100_000, searches_before=300)
QUICK = Plan(rows=5_000, searches_before=100)


@dataclass
class Searcher:
    """Searches one after another until stopped; latencies and failures kept."""

    http: httpx.AsyncClient
    latencies_ms: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def one(self, number: int) -> None:
        query = f"{PHRASES[number % len(PHRASES)]} {number % 97}"
        began = time.perf_counter()
        try:
            answer = await self.http.post(SEARCH_PATH, json={"query": query, "limit": 10})
        except httpx.HTTPError as exc:
            self.failures.append(type(exc).__name__)
            return
        if answer.status_code != 200:
            self.failures.append(f"HTTP {answer.status_code}: {answer.text[:200]}")
            return
        self.latencies_ms.append((time.perf_counter() - began) * 1000)

    async def until_stopped(self) -> None:
        number = 0
        while not self.stop.is_set():
            await self.one(number)
            number += 1


@asynccontextmanager
async def stack(db_url: str, nats_url: str) -> AsyncIterator[tuple[str, dict[str, str], str]]:
    """The stub, the API and one worker; all stopped afterwards."""
    stream = f"benchswitch{uuid.uuid4().hex[:8]}"
    stub, stub_url = start_stub(STUB.dims)
    children: list[Child] = []
    try:
        env = {
            **api_env(db_url, nats_url, stream, STUB, stub_url),
            "PROVIDER_ALLOWED_HOSTS": "127.0.0.1",
        }
        port = free_port()
        api = api_child(env, "127.0.0.1", port, "--no-access-log", "--log-level", "warning")
        children = [api, worker_child(env)]
        for child in children:
            child.start()
        base = f"http://127.0.0.1:{port}"
        await wait_ready(base, await bench_headers(db_url, "search"), api)
        yield base, env, stub_url
    finally:
        stop_all(children)
        stub.terminate()
        stub.wait(10)
        await delete_stream(nats_url, stream)


def cli(env: dict[str, str], *args: str) -> float:
    """`tasktracker embeddings ...`; its seconds. A failure raises with its output."""
    began = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "embeddings", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"embeddings {' '.join(args)} failed: {result.stdout}{result.stderr}")
    return time.perf_counter() - began


async def backlog(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM messages WHERE embedding_content_hash_next "
                "IS DISTINCT FROM content_hash"
            )
        )
    finally:
        await conn.close()


async def index_note(url: str, name: str) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        note = await conn.fetchval(f"SELECT obj_description('{name}'::regclass, 'pg_class')")
    finally:
        await conn.close()
    return dict(json.loads(note)) if note else {}


async def add_provider(url: str, stub_url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO llm_providers (id, name, type, base_url, embedding_model, "
            "embedding_dimensions) VALUES (gen_random_uuid(), $1, 'openai', $2, "
            "'text-embedding-3-large', $3)",
            PROVIDER,
            stub_url,
            TARGET_DIMS,
        )
    finally:
        await conn.close()


@dataclass
class Timings:
    switch_command_seconds: float = 0.0  # the command that publishes the fill (process start in)
    fill_seconds: float = 0.0
    index_seconds: float = 0.0
    cutover_command_seconds: float = 0.0
    to_cutover_seconds: float = 0.0


async def switch_and_time(url: str, env: dict[str, str], rows: int) -> Timings:
    """switch (queues the fill), wait for no row left, --wait (builds the index), cutover."""
    timings = Timings()
    began = time.perf_counter()
    timings.switch_command_seconds = await asyncio.to_thread(
        cli, env, "switch", "--provider", PROVIDER
    )
    while await backlog(url):
        await asyncio.sleep(0.5)
    timings.fill_seconds = time.perf_counter() - began
    await asyncio.to_thread(cli, env, "switch", "--provider", PROVIDER, "--wait")
    note = await index_note(url, "messages_embedding_next_hnsw_idx")
    timings.index_seconds = float(note.get("seconds", 0.0))
    timings.cutover_command_seconds = await asyncio.to_thread(cli, env, "cutover")
    timings.to_cutover_seconds = time.perf_counter() - began
    del rows
    return timings


async def measure(url: str, nats_url: str, plan: Plan) -> dict[str, Any]:
    async with stack(url, nats_url) as (base, env, stub_url):
        await add_provider(url, stub_url)
        headers = await bench_headers(url, "search")
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
            before = Searcher(http)
            for number in range(plan.searches_before):
                await before.one(number)
            during = Searcher(http)
            searching = asyncio.create_task(during.until_stopped())
            try:
                timings = await switch_and_time(url, env, plan.rows)
            finally:
                during.stop.set()
                await searching
            after = Searcher(http)
            for number in range(plan.searches_before):
                await after.one(number)
    return {
        **asdict(timings),
        "fill_rows_per_second": round(plan.rows / timings.fill_seconds, 1),
        "search_before": latency_summary(before.latencies_ms),
        "search_during": latency_summary(during.latencies_ms),
        "search_after": latency_summary(after.latencies_ms),
        "failed_searches": len(before.failures) + len(during.failures) + len(after.failures),
        "failures_seen": (before.failures + during.failures + after.failures)[:5],
    }


async def run(settings: Settings, *, quick: bool) -> dict[str, Any]:
    plan = QUICK if quick else FULL
    nats_url = endpoints.ensure_nats_url(settings)
    async with scratch_database(settings, "tasktracker_bench_switch") as url:
        await asyncio.to_thread(migrate, url, STUB.dims)
        await load_messages(url, plan.rows, STUB.dims)
        load_before = os.getloadavg()
        figures = await measure(url, nats_url, plan)
    return {
        "config": {"rows": plan.rows, "from_dims": STUB.dims, "to_dims": TARGET_DIMS},
        **figures,
        # the machine is shared: its load average (1, 5, 15 min) when the switch began and ended
        "load_average": {"start": list(load_before), "end": list(os.getloadavg())},
    }


def targets(section: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        target(
            f"switch of {section['config']['rows']:,} rows to {section['config']['to_dims']} dims",
            "no failed search",
            f"{section['failed_searches']} failed of "
            f"{sum(section[k]['count'] for k in ('search_before', 'search_during', 'search_after'))}",
            section["failed_searches"] == 0,
        )
    ]


def render(section: dict[str, Any], plots: Any) -> str:  # noqa: ARG001 - a table
    config = section["config"]
    rows = []
    if "switch_command_seconds" in section:
        command = section["switch_command_seconds"]
        rows.append(
            ("`switch` command (publishes the fill)", f"{command:.1f} s", "process start in")
        )
    rows += [
        (
            "fill (switch started to no row left)",
            f"{section['fill_seconds']:.1f} s",
            f"{section['fill_rows_per_second']:,.0f} rows/s",
        ),
        ("target HNSW build (CONCURRENTLY)", f"{section['index_seconds']:.1f} s", ""),
        (
            "`cutover` command",
            f"{section['cutover_command_seconds']:.1f} s",
            "process start included",
        ),
        ("start to cutover done", f"{section['to_cutover_seconds']:.1f} s", ""),
    ]
    out = [
        "## Model switch",
        "",
        f"`tasktracker embeddings switch` of {config['rows']:,} messages from {config['from_dims']} "
        f"to {config['to_dims']} dimensions with the zero-latency stub (a process), one worker "
        "and the API as processes with the default settings; a client searches through the API "
        "one request after another before, during (fill, index build, cutover) and after.",
        "",
        "| step | time | |",
        "|---|---:|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in rows),
        "",
        "| search | p50 ms | p95 ms | requests |",
        "|---|---:|---:|---:|",
    ]
    for key, label in (
        ("search_before", "before"),
        ("search_during", "during the switch"),
        ("search_after", "after the cutover"),
    ):
        s = section[key]
        out.append(f"| {label} | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} | {s['count']} |")
    out += ["", f"Failed searches: {section['failed_searches']}."]
    if "load_average" in section:
        load = section["load_average"]
        out.append(
            "Load average (1, 5, 15 min) of the shared machine when the switch began: "
            f"{', '.join(f'{x:.2f}' for x in load['start'])}; when it ended: "
            f"{', '.join(f'{x:.2f}' for x in load['end'])}."
        )
    out.append("")
    return "\n".join(out)
