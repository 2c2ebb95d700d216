"""`alembic upgrade head` from 0001 at production size: the command users run, timed end to end.

A scratch database is migrated to 0001 with the column at the size's dimensions, filled with
clustered vectors inside Postgres, vacuumed, and then `alembic upgrade head` runs as a child
process with the default index settings. While it runs, the Postgres processes' proportional set
size (PSS: shared pages counted once) is sampled, so the build's peak memory is the sum over the
server's processes minus what they held before. The memory check's decision and the progress
lines come from the command's own output.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from app.core.config import Settings
from app.core.sizes import human
from bench.pipeline import alembic
from bench.scratch import scratch_database
from bench.stats import target
from testkit.vectors import centers_sql, near_center_sql

FULL_SIZES = ((1_000_000, 384), (200_000, 1536))
QUICK_SIZES = ((20_000, 384), (5_000, 1536))
CHUNK = 50_000
INDEX = "messages_embedding_hnsw_idx"


@dataclass
class MigrateRun:
    rows: int
    dims: int
    load_seconds: float
    command_seconds: float
    exit_code: int
    decision: str
    build: dict[str, Any]
    index_bytes: int
    peak_build_memory_bytes: int
    load_average: float
    output: list[str]


async def fill(url: str, rows: int, dims: int, clusters: int = 50) -> None:
    """`rows` messages with clustered vectors, in chunks (each its own statement)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SELECT setseed(0.25)")
        await conn.execute(f"CREATE TEMP TABLE centers AS {centers_sql(clusters, dims)}")
        for start in range(0, rows, CHUNK):
            await conn.execute(
                "INSERT INTO messages (id, author, channel, content, sent_at, embedding) "
                "SELECT gen_random_uuid(), 'author', 'c' || (g % 10), 'message ' || g, now(), "
                f"{near_center_sql(0.2, 'g')} "
                f"FROM generate_series($1::int, $2::int) g JOIN centers ON centers.c = g % {clusters}",
                start + 1,
                min(rows, start + CHUNK),
            )
        await conn.execute("VACUUM ANALYZE messages")
    finally:
        await conn.close()


class PssSampler:
    """The summed PSS of a local Postgres server's processes, sampled four times a second."""

    def __init__(self, postmaster: psutil.Process):
        self.postmaster = postmaster
        self.baseline = self.total()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def total(self) -> int:
        pss = 0
        for process in [self.postmaster, *self.postmaster.children()]:
            try:
                pss += int(process.memory_full_info().pss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return pss

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.peak = max(self.peak, self.total())

    def __enter__(self) -> PssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


async def postmaster_of(url: str) -> psutil.Process:
    conn = await asyncpg.connect(url)
    try:
        pid = int(await conn.fetchval("SELECT pg_backend_pid()"))
    finally:
        await conn.close()
    return psutil.Process(psutil.Process(pid).ppid())


async def last_build(url: str) -> tuple[dict[str, Any], int]:
    import json

    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT obj_description(to_regclass($1), 'pg_class') AS note, "
            "pg_relation_size(to_regclass($1)) AS size",
            INDEX,
        )
    finally:
        await conn.close()
    note = json.loads(row["note"]) if row and row["note"] else {}
    return note, int(row["size"] or 0) if row else 0


async def measure(settings: Settings, rows: int, dims: int) -> MigrateRun:
    """One size: 0001, fill, then the timed `alembic upgrade head`."""
    async with scratch_database(settings, "tasktracker_bench_migrate") as url:
        first = await asyncio.to_thread(alembic, url, dims, "upgrade", "0001")
        if first.returncode != 0:
            raise RuntimeError(first.stderr)
        began = time.perf_counter()
        await fill(url, rows, dims)
        load_seconds = time.perf_counter() - began
        with PssSampler(await postmaster_of(url)) as sampler:
            began = time.perf_counter()
            result = await asyncio.to_thread(alembic, url, dims, "upgrade", "head")
            command_seconds = time.perf_counter() - began
        build, size = await last_build(url)
    output = [line for line in result.stderr.splitlines() if line.startswith(f"index {INDEX}")]
    decision = next((line for line in output if "building (" in line), "")
    return MigrateRun(
        rows=rows,
        dims=dims,
        load_seconds=round(load_seconds, 1),
        command_seconds=round(command_seconds, 1),
        exit_code=result.returncode,
        decision=decision.split("): ", 1)[-1],
        build=build,
        index_bytes=size,
        peak_build_memory_bytes=max(0, sampler.peak - sampler.baseline),
        load_average=round(os.getloadavg()[0], 2),
        output=output if result.returncode == 0 else result.stderr.splitlines()[-20:],
    )


async def run(settings: Settings, *, quick: bool) -> dict[str, Any]:
    sizes = QUICK_SIZES if quick else FULL_SIZES
    runs = [await measure(settings, rows, dims) for rows, dims in sizes]
    return {
        "config": {
            "quick": quick,
            "maintenance_work_mem": settings.index_maintenance_work_mem,
            "maintenance_work_mem_max": settings.index_maintenance_work_mem_max,
            "parallel_workers": settings.index_parallel_workers,
        },
        "runs": [asdict(r) for r in runs],
    }


def render(section: dict[str, Any], plots: Path) -> str:  # noqa: ARG001 - no plot
    config = section["config"]
    out = [
        "## `alembic upgrade head` at production size",
        "",
        "The command users run, from revision 0001 to head, on a table already holding its "
        "vectors (clustered synthetic data made inside Postgres, vacuumed), timed end to end as a "
        "child process with the default settings: INDEX_MAINTENANCE_WORK_MEM "
        f"{config['maintenance_work_mem']}, ceiling INDEX_MAINTENANCE_WORK_MEM_MAX "
        f"{config['maintenance_work_mem_max']}, {config['parallel_workers']} parallel workers. "
        "Peak memory is the Postgres processes' summed PSS during the command minus before it.",
        "",
        "| rows × dims | load s | `alembic upgrade head` s | exit | memory check's decision | "
        "build s | mwm used | spilled | peak build memory | index size | load avg |",
        "|---|---:|---:|---:|---|---:|---|---|---:|---:|---:|",
    ]
    for r in section["runs"]:
        build = r["build"]
        out.append(
            f"| {r['rows']:,} × {r['dims']} | {r['load_seconds']:.0f} | "
            f"{r['command_seconds']:.1f} | {r['exit_code']} | {r['decision']} | "
            f"{build.get('seconds', '-')} | {build.get('maintenance_work_mem', '-')} | "
            f"{'yes' if build.get('spilled') else 'no'} | "
            f"{human(r['peak_build_memory_bytes'])} | {human(r['index_bytes'])} | "
            f"{r['load_average']} |"
        )
    largest = max(section["runs"], key=lambda r: r["rows"] * r["dims"])
    out += [
        "",
        f"The command's output at {largest['rows']:,} × {largest['dims']} (plain lines: not a "
        "terminal), messages index:",
        "",
        "```",
        *largest["output"],
        "```",
        "",
    ]
    return "\n".join(out)


def targets(section: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for r in section["runs"]:
        build = r["build"]
        rows.append(
            target(
                f"`alembic upgrade head` at {r['rows']:,} × {r['dims']} succeeds without a spill",
                "exit 0, graph in memory",
                f"exit {r['exit_code']} in {r['command_seconds']:.0f} s, "
                f"{'spilled' if build.get('spilled') else 'in memory'}",
                r["exit_code"] == 0 and not build.get("spilled"),
            )
        )
    return rows
