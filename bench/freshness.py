"""Ingest to searchable: from `POST /messages` answering to that message coming back from search.

The API and the worker run as processes (uvicorn, `tasktracker worker`, default settings but
the provider) over a scratch database of preloaded embedded messages with the HNSW index. One
probe at a time: a message with a unique text is posted; as soon as the API answers, a client
searches for that text every 20 ms until the new message is among the hits (the query embeds
the same text, so it ranks first once its vector is written and the index holds it). Run with
the zero-latency OpenAI-compatible stub and with the local model (multilingual-e5-small).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
from pgvector.asyncpg import register_vector

from app.core import endpoints
from app.core.config import REPO_ROOT, Settings
from app.core.embedded import free_port
from app.core.supervisor import Child, api_child, stop_all, worker_child
from bench.api import (
    LOCAL,
    PHRASES,
    SEARCH_PATH,
    Provider,
    api_env,
    bench_headers,
    delete_stream,
    load_messages,
    wait_ready,
)
from bench.pipeline import local_provider, migrate, start_stub
from bench.scratch import scratch_database
from bench.stats import latency_summary, target

STUB = Provider("stub", "stub", 384)
INGEST_PATH = "/api/v1/messages"
POLL_SECONDS = 0.02
PROBE_TIMEOUT = 60.0


@dataclass(frozen=True)
class Plan:
    preloaded: int  # synthetic vectors, for the stub
    model_rows: int  # rows the local model embeds first (through the backfill script)
    probes: int


FULL = Plan(preloaded=100_000, model_rows=2_000, probes=100)
QUICK = Plan(preloaded=5_000, model_rows=200, probes=15)


@asynccontextmanager
async def stack(
    db_url: str, nats_url: str, provider: Provider
) -> AsyncIterator[tuple[str, dict[str, str], dict[str, str]]]:
    """API and worker on `provider` (a stub process for the stub); all stopped afterwards."""
    stream = f"benchfresh{uuid.uuid4().hex[:8]}"
    stub: subprocess.Popen[str] | None = None
    children: list[Child] = []
    try:
        stub_url = None
        if provider.kind == "stub":
            stub, stub_url = start_stub(provider.dims)
        env = api_env(db_url, nats_url, stream, provider, stub_url)
        port = free_port()
        api = api_child(env, "127.0.0.1", port, "--no-access-log", "--log-level", "warning")
        children = [api, worker_child(env)]
        for child in children:
            child.start()
        base = f"http://127.0.0.1:{port}"
        headers = await bench_headers(db_url, "write")
        await wait_ready(base, headers, api)
        yield base, headers, env
    finally:
        stop_all(children)
        if stub is not None:
            stub.terminate()
            stub.wait(10)
        await delete_stream(nats_url, stream)


@dataclass
class Probe:
    id: str
    content: str
    seconds: float | None  # None: not found within PROBE_TIMEOUT


async def probe(http: httpx.AsyncClient, number: int) -> Probe:
    """Seconds from the ingest's answer to the message found by search; None on time-out."""
    content = f"freshness probe {number} {uuid.uuid4().hex[:10]}: {PHRASES[number % len(PHRASES)]}"
    response = await http.post(
        INGEST_PATH, json={"author": "probe", "channel": "fresh", "content": content}
    )
    response.raise_for_status()
    answered = time.perf_counter()
    message_id = response.json()["ids"][0]
    while time.perf_counter() - answered < PROBE_TIMEOUT:
        found = await http.post(SEARCH_PATH, json={"query": content, "limit": 5})
        if found.is_success and any(hit["id"] == message_id for hit in found.json()["results"]):
            return Probe(message_id, content, time.perf_counter() - answered)
        await asyncio.sleep(POLL_SECONDS)
    return Probe(message_id, content, None)


async def diagnose(url: str, missed: Probe, local: bool) -> dict[str, Any]:
    """Why a probe was never found: not embedded, or embedded and not returned by the index.

    With the local model, its query vector is computed here as search computes it, and the
    row's rank is read from an exact scan and from the index at two ef_search values.
    """
    conn = await asyncpg.connect(url)
    try:
        await register_vector(conn)
        row = await conn.fetchrow(
            "SELECT embedded_at IS NOT NULL AS embedded, embedding_attempts, embedding_error "
            "FROM messages WHERE id = $1",
            uuid.UUID(missed.id),
        )
        out: dict[str, Any] = {"id": missed.id, **dict(row)} if row else {"id": missed.id}
        if local and row and row["embedded"]:
            async with local_provider() as provider:
                vector = (await provider.embed([missed.content], kind="query"))[0]
            sql = "SELECT id::text FROM messages ORDER BY embedding <=> $1 LIMIT 5"
            await conn.execute("SET enable_indexscan = off")
            out["in_exact_top5"] = missed.id in [r[0] for r in await conn.fetch(sql, vector)]
            await conn.execute("RESET enable_indexscan")
            for ef in (64, 400):
                await conn.execute(f"SET hnsw.ef_search = {ef}")
                ids = [r[0] for r in await conn.fetch(sql, vector)]
                out[f"in_index_top5_ef{ef}"] = missed.id in ids
        return out
    finally:
        await conn.close()


def backfill(env: dict[str, str]) -> None:
    """`backfill_embeddings.py --wait` with the stack's settings: every row embedded first."""
    result = subprocess.run(
        [sys.executable, "backend/scripts/backfill_embeddings.py", "--wait"],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"backfill failed: {result.stderr[-2000:]}")


async def measure(url: str, nats_url: str, provider: Provider, plan: Plan) -> dict[str, Any]:
    async with stack(url, nats_url, provider) as (base, headers, env):
        if provider.kind == "local":
            await asyncio.to_thread(backfill, env)
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
            await probe(http, -1)  # warm-up: first task, first provider call
            probes = [await probe(http, number) for number in range(plan.probes)]
        missed = [p for p in probes if p.seconds is None]
        diagnoses = [await diagnose(url, p, provider.kind == "local") for p in missed]
    found = [p.seconds * 1000 for p in probes if p.seconds is not None]
    return {
        "provider": provider.name,
        "probes": plan.probes,
        "timed_out": len(missed),
        "timed_out_diagnosis": diagnoses,
        **latency_summary(found),
        "max_ms": round(max(found), 1) if found else None,
    }


async def run(settings: Settings, *, quick: bool) -> dict[str, Any]:
    plan = QUICK if quick else FULL
    nats_url = endpoints.ensure_nats_url(settings)
    results = []
    # The stub's vectors are random, like the synthetic ones preloaded; the model's are not:
    # its probes go into a table of texts the model embedded (an HNSW graph of synthetic
    # vectors does not lead a search to model vectors inserted later: measured, every probe
    # timed out).
    async with scratch_database(settings, "tasktracker_bench_freshness") as url:
        await asyncio.to_thread(migrate, url, 384)
        await load_messages(url, plan.preloaded, 384)
        results.append(await measure(url, nats_url, STUB, plan))
    async with scratch_database(settings, "tasktracker_bench_freshness_model") as url:
        await asyncio.to_thread(migrate, url, 384)
        await insert_texts(url, plan.model_rows)
        results.append(await measure(url, nats_url, LOCAL, plan))
    return {
        "config": {
            "preloaded": plan.preloaded,
            "model_rows": plan.model_rows,
            "probes": plan.probes,
            "poll_ms": POLL_SECONDS * 1000,
        },
        "providers": results,
    }


async def insert_texts(url: str, rows: int) -> None:
    """`rows` messages of varied team-chat text, not embedded yet."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO messages (id, author, channel, content, sent_at) SELECT gen_random_uuid(), "
            "'team', 'c' || (g % 10), ($2::text[])[1 + g % cardinality($2::text[])] || ' (#' || g "
            "|| ')', now() FROM generate_series(1, $1) g",
            rows,
            list(PHRASES),
        )
    finally:
        await conn.close()


def targets(section: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        target(
            f"ingest to searchable, {row['provider']} provider",
            "every probe found",
            f"p50 {row['p50_ms']:.0f} ms, p95 {row['p95_ms']:.0f} ms, {row['timed_out']} timed out",
            row["timed_out"] == 0,
        )
        for row in section["providers"]
    ]


def render(section: dict[str, Any], plots: Any) -> str:  # noqa: ARG001 - a table
    config = section["config"]
    out = [
        "## Ingest to searchable",
        "",
        "From `POST /api/v1/messages` answering to the message returned by a search for its "
        f"text, one probe at a time ({config['probes']} probes); API and worker as processes with "
        f"the default settings; the search is repeated every {config['poll_ms']:.0f} ms (the "
        f"resolution). Stub: over {config['preloaded']:,} preloaded synthetic vectors with the "
        f"HNSW index. Local model: over {config.get('model_rows', 0):,} messages the model "
        "embedded first (through `backfill_embeddings.py --wait`). A probe never found is "
        "diagnosed below the table: embedded or not, and (local model) whether an exact scan "
        "and the index at ef_search 64 and 400 return it in the top 5.",
        "",
        "| provider | p50 ms | p95 ms | p99 ms | max ms | timed out |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in section["providers"]:
        out.append(
            f"| {row['provider']} | {row['p50_ms']:.0f} | {row['p95_ms']:.0f} | "
            f"{row['p99_ms']:.0f} | {row['max_ms']} | {row['timed_out']} |"
        )
    out.append("")
    for row in section["providers"]:
        for missed in row.get("timed_out_diagnosis", []):
            facts = ", ".join(f"{k} {v}" for k, v in missed.items() if k != "id")
            out.append(f"- {row['provider']}: probe {missed['id']} never found: {facts}")
    out.append("")
    return "\n".join(out)
