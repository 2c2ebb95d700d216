"""The API behind PgBouncer in transaction mode, beside the same API on Postgres directly.

One scratch database of embedded messages at the default model's size (384 dims) with the
project's HNSW index, and two API processes on it, both with the default settings and the
zero-latency stub as provider: **direct**, DATABASE_URL on the server; **PgBouncer**, Debian's
PgBouncer with its defaults but `pool_mode = transaction` (default_pool_size 20) between the API
and the server, the API with DATABASE_POOL_MODE=transaction. Both are driven as the api section
drives its API (bench/api.py: the same clients, windows, CPU meter and interleaved rounds).
At the end: how many server connections each API holds (pg_stat_activity and SHOW POOLS).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import asyncpg

from app.core import endpoints
from app.core.config import Settings
from app.core.urls import database_name
from bench.api import Plan, Provider, level_summary, load_messages, measure
from bench.pipeline import migrate
from bench.scratch import scratch_database
from bench.stats import Spread, target
from testkit.launchers import PgBouncer

DIMS = 384
PGBOUNCER_DEFAULT_POOL_SIZE = 20  # PgBouncer's own default_pool_size


FULL = Plan(rows=100_000, levels=(1, 32), rounds=3, seconds=15.0, warmup=2.0, cached_variant=False)
QUICK = replace(FULL, rows=10_000, rounds=1, seconds=2.0, warmup=0.5)
DIRECT = "direct"
POOLED = "PgBouncer, transaction mode"


async def run(settings: Settings, *, quick: bool) -> dict[str, Any]:
    plan = QUICK if quick else FULL
    if PgBouncer.binary() is None:
        raise RuntimeError("pgbouncer is not installed. Fix: apt-get install pgbouncer")
    began = time.perf_counter()
    async with scratch_database(settings, "tasktracker_bench_pooler") as db:
        nats_url = endpoints.ensure_nats_url(settings)
        started = time.perf_counter()
        await asyncio.to_thread(migrate, db, DIMS)
        await load_messages(db, plan.rows, DIMS)
        setup = round(time.perf_counter() - started, 1)
        folder = Path(tempfile.mkdtemp(prefix="tt-bench-pgbouncer-"))
        bouncer = PgBouncer(
            db, folder / "pgbouncer", server_connections=PGBOUNCER_DEFAULT_POOL_SIZE
        ).start()
        try:
            pooled = Provider(
                POOLED,
                "stub",
                DIMS,
                env=(
                    ("DATABASE_URL", bouncer.url(database_name(db))),
                    ("DATABASE_POOL_MODE", "transaction"),
                    ("DATABASE_DIRECT_URL", db),
                ),
            )
            direct = Provider(DIRECT, "stub", DIMS)
            connections: dict[str, int] = {}

            async def held() -> None:
                """Server connections at the end, while both APIs are still up."""
                connections.update(await _connections(db, bouncer))

            variants = await measure(nats_url, [(db, direct), (db, pooled)], plan, held)
        finally:
            bouncer.stop()
            shutil.rmtree(folder, ignore_errors=True)
    return {
        "config": {**asdict(plan), "dims": DIMS, "quick": quick, "pgbouncer": _version()},
        "variants": variants,
        "server_connections": connections,
        "setup_seconds": setup,
        "seconds": round(time.perf_counter() - began, 1),
    }


async def _connections(db: str, bouncer: PgBouncer) -> dict[str, int]:
    conn = await asyncpg.connect(db)
    try:
        total = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    kinds = ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")
    pooled = sum(
        int(row.get(kind) or 0)
        for row in bouncer.pools()
        if row["database"] == database_name(db)
        for kind in kinds
    )
    # the benchmark's own connection for the CPU meter is the one left
    return {"direct_api": int(total) - pooled - 1, "pgbouncer": pooled}


def _version() -> str:
    binary = PgBouncer.binary()
    out = subprocess.run([binary or "pgbouncer", "--version"], capture_output=True, text=True)
    return (out.stdout.splitlines() or ["unknown"])[0]


# ----------------------------------------------------------------------------- report


def targets(section: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for clients in section["config"]["levels"]:
        pooled = level_summary(section, POOLED, clients)
        direct = level_summary(section, DIRECT, clients)
        if pooled is None or direct is None:
            continue
        rps = Spread(**pooled["requests_per_second"])
        rows.append(
            target(
                f"API search through PgBouncer (transaction mode), {clients} client(s)",
                "no errors; p50 and requests/s beside direct",
                f"{pooled['errors']} errors of {pooled['requests']:,}; p50 "
                f"{pooled['p50_ms']['median']:.1f} vs {direct['p50_ms']['median']:.1f} ms, "
                f"{rps.median:,.0f} vs {direct['requests_per_second']['median']:,.0f} req/s",
                pooled["errors"] == 0,
            )
        )
    return rows


def render(section: dict[str, Any], plots: Path) -> str:  # noqa: ARG001 - a table
    c = section["config"]
    held = section["server_connections"]
    lines = [
        "## Behind PgBouncer: the API in transaction mode beside direct",
        "",
        f"`POST /api/v1/semantic_search/messages` over HTTP, as in the api section, to two API "
        f"processes on one scratch database of {c['rows']:,} embedded messages ({c['dims']} "
        "dims, the project's HNSW index, VACUUM ANALYZE), the zero-latency stub as provider, "
        f"every setting at its default. **{DIRECT}**: DATABASE_URL on the server. **{POOLED}**: "
        f"{c['pgbouncer']} with its defaults but `pool_mode = transaction` (default_pool_size "
        f"{PGBOUNCER_DEFAULT_POOL_SIZE}), the API with `DATABASE_POOL_MODE=transaction` (no "
        "startup settings: each search sets its own in one statement before its page; no "
        f"cached prepared statements). {c['warmup']:g} s warm-up, {c['seconds']:g} s measured, "
        f"{c['rounds']} rounds with the two interleaved; medians with their range. Setup "
        f"(migrate, load, index) {section['setup_seconds']:.0f} s.",
        "",
        "| variant | clients | p50 ms | p95 ms | requests/s | errors | CPU ms/request: API "
        "| Postgres |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant in section["variants"]:
        for level in variant["levels"]:
            s = level["summary"]
            cpu = [
                "-" if (v := s["cpu_ms_per_request"][key]) is None else Spread(**v).text(".2f")
                for key in ("api", "postgres")
            ]
            lines.append(
                f"| {variant['name']} | {level['clients']} | {Spread(**s['p50_ms']).text('.1f')} "
                f"| {Spread(**s['p95_ms']).text('.1f')} "
                f"| {Spread(**s['requests_per_second']).text(',.0f')} | {s['errors']} "
                f"| {cpu[0]} | {cpu[1]} |"
            )
    lines += [
        "",
        f"Server connections held at the end, both APIs still up: the direct API "
        f"{held.get('direct_api', '-')}, PgBouncer {held.get('pgbouncer', '-')} (for the "
        "other API's two pools). PgBouncer's own CPU is not in the table.",
    ]
    return "\n".join(lines) + "\n"
