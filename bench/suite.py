"""`tasktracker bench`: run sections, keep their raw figures in docs/bench/results.json, and
write docs/BENCHMARKS.md (tables, plots, targets) from that file.

Each section (pipeline, search, api, index) is a module with `run(settings, quick=...)`
returning JSON-ready figures, `render(figures, plots_dir)` returning Markdown (and writing its
PNGs), and `targets(figures)`. Running one section replaces its figures and keeps the others',
so the report is always whole; each section states when and how it was measured.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from app.core import endpoints
from app.core.config import REPO_ROOT, Settings
from app.core.urls import to_libpq_url
from bench.scratch import scratch_database
from bench.stats import target

DOCS = REPO_ROOT / "docs"
ORDER = (
    "pipeline",
    "search",
    "scale",
    "halfvec",
    "real",
    "freshness",
    "index",
    "migrate",
    "api",
    "pooler",
    "load",
    "faults",
    "switch",
)


class Section(Protocol):
    def run(self, settings: Settings, *, quick: bool) -> Awaitable[dict[str, Any]]: ...

    def render(self, section: dict[str, Any], plots: Path) -> str: ...

    def targets(self, section: dict[str, Any]) -> list[dict[str, Any]]: ...


class IndexSection:
    """HNSW build time with the revision's settings, CONCURRENTLY and plain, while a writer
    keeps inserting and updating (bench/index_build.py)."""

    async def run(self, settings: Settings, *, quick: bool) -> dict[str, Any]:
        from bench.index_build import run as build

        rows, dims = (10_000, 1536) if quick else (100_000, 1536)
        async with scratch_database(settings, "tasktracker_bench_index") as url:
            results = await build(
                url,
                rows=rows,
                dims=dims,
                work_mem=settings.index_maintenance_work_mem,
                parallel_workers=settings.index_parallel_workers,
            )
        return {
            "config": {
                "quick": quick,
                "rows": rows,
                "dims": dims,
                "maintenance_work_mem": settings.index_maintenance_work_mem,
                "parallel_workers": settings.index_parallel_workers,
            },
            "builds": [r.as_dict() for r in results],
        }

    def render(self, section: dict[str, Any], plots: Path) -> str:  # noqa: ARG002 (no plot)
        config = section["config"]
        out = [
            "## Index build under write load",
            "",
            f"`CREATE INDEX [CONCURRENTLY] ... USING hnsw (embedding vector_cosine_ops) WITH "
            f"(m = 16, ef_construction = 64)` on {config['rows']:,} clustered synthetic vectors "
            f"× {config['dims']} dims, with the revision's session settings "
            f"(maintenance_work_mem {config.get('maintenance_work_mem', '256MB')}, "
            f"{config.get('parallel_workers', 2)} parallel workers), while one writer inserts a row "
            "and updates another every 10 ms. Writes completed during the build and their "
            "latency show who is blocked.",
            "",
            "| build | seconds | writes completed during the build | write p50 ms | write max ms |",
            "|---|---:|---:|---:|---:|",
        ]
        for build in section["builds"]:
            kind = "CREATE INDEX CONCURRENTLY" if build["concurrently"] else "CREATE INDEX"
            out.append(
                f"| {kind} | {build['build_seconds']:.1f} | {build['writes_during_build']} | "
                f"{build['write_p50_ms']} | {build['write_max_ms']} |"
            )
        out.append("")
        return "\n".join(out)

    def targets(self, section: dict[str, Any]) -> list[dict[str, Any]]:
        concurrent = next(b for b in section["builds"] if b["concurrently"])
        return [
            target(
                f"CREATE INDEX CONCURRENTLY at {section['config']['rows']:,} rows does not block writers",
                "writes complete during the build",
                f"{concurrent['writes_during_build']} writes during {concurrent['build_seconds']:.0f} s",
                concurrent["writes_during_build"] > 0,
            )
        ]


def sections() -> dict[str, Section]:
    from bench import (
        api,
        faults,
        freshness,
        load,
        migrate,
        pipeline_suite,
        pooler,
        search,
        search_halfvec,
        search_real,
        search_scale,
        switch,
    )

    return {
        "pipeline": pipeline_suite,
        "search": search,
        "index": IndexSection(),
        "migrate": migrate,
        "scale": search_scale,
        "halfvec": search_halfvec,
        "real": search_real,
        "freshness": freshness,
        "api": api,
        "pooler": pooler,
        "load": load,
        "faults": faults,
        "switch": switch,
    }


async def machine(settings: Settings) -> dict[str, Any]:
    """Cores, memory, versions and date: stated above every table."""
    conn = await asyncpg.connect(to_libpq_url(endpoints.ensure_database_url(settings)))
    try:
        postgres = await conn.fetchval("SHOW server_version")
        pgvector = await conn.fetchval(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
        )
    finally:
        await conn.close()
    memory_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 1024 / 1024, 1),
        "cpu": _cpu_model(),
        "postgres": postgres,
        "pgvector": pgvector,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": commit or "unknown",
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def load(path: Path) -> dict[str, Any]:
    if path.exists():
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    return {"sections": {}}


async def run(
    settings: Settings,
    names: list[str],
    *,
    quick: bool,
    docs: Path = DOCS,
    progress: Callable[[str], None] = print,
) -> Path:
    """Run `names` in order, merge into results.json, rewrite the report; returns its path.

    The figures are saved after each section, so a failure keeps what was measured before it.
    """
    results_path = docs / "bench" / "results.json"
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results = load(results_path)
    registry = sections()
    try:
        about = await machine(settings)
        for name in names:
            await _run_one(
                registry[name], name, settings, quick, results, results_path, about, progress
            )
    finally:
        endpoints.release()  # the embedded servers, if this run started or joined them
    return write_report(results, docs)


async def _run_one(
    section: Section,
    name: str,
    settings: Settings,
    quick: bool,
    results: dict[str, Any],
    results_path: Path,
    about: dict[str, Any],
    progress: Callable[[str], None],
) -> None:
    progress(f"bench {name}{' (quick)' if quick else ''} ...")
    began = time.perf_counter()
    figures = await section.run(settings, quick=quick)
    seconds = time.perf_counter() - began
    results["sections"][name] = {
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round(seconds, 1),
        "quick": quick,
        "machine": about,
        "figures": figures,
    }
    results_path.write_text(json.dumps(results, indent=1) + "\n")
    progress(f"bench {name}: {seconds:.0f} s")


def _machine_line(about: dict[str, Any]) -> str:
    return (
        f"{about['cores']} cores ({about['cpu']}), {about['memory_gib']} GiB; PostgreSQL "
        f"{about['postgres']}, pgvector {about['pgvector']}, Python {about['python']}; "
        f"commit {about['commit']}"
    )


def write_report(results: dict[str, Any], docs: Path = DOCS) -> Path:
    """docs/BENCHMARKS.md and docs/bench/*.png from the figures alone."""
    registry = sections()
    plots = docs / "bench"
    plots.mkdir(parents=True, exist_ok=True)
    present = [name for name in ORDER if name in results["sections"]]
    out = [
        "# Benchmarks",
        "",
        "Written by `uv run tasktracker bench [pipeline|search|index|api|all|migrate|scale|halfvec|real|freshness|pooler|load|faults|switch] "
        "[--quick]` (or `just bench`) from the raw figures in "
        "[bench/results.json](bench/results.json); do not edit by hand (the analysis at the "
        "end comes from [bench/analysis.md](bench/analysis.md)). Every figure is a median over "
        "repeated rounds with its range, on a shared 2-core machine: ratios between systems "
        "measured in the same run say more than absolute figures.",
        "",
        "| section | measured | size | run time | machine |",
        "|---|---|---|---:|---|",
    ]
    for name in present:
        entry = results["sections"][name]
        out.append(
            f"| [{name}](#{_anchor(name)}) | {entry['measured_at']} | "
            f"{'quick' if entry['quick'] else 'full'} | {entry['seconds']:.0f} s | "
            f"{_machine_line(entry['machine'])} |"
        )
    out += ["", "## Targets", "", "| target | wanted | measured | met |", "|---|---|---|:---:|"]
    for name in present:
        for row in registry[name].targets(results["sections"][name]["figures"]):
            out.append(
                f"| {row['name']} | {row['target']} | {row['measured']} | "
                f"{'yes' if row['met'] else '**no**'} |"
            )
    out.append("")
    for name in present:
        entry = results["sections"][name]
        fragment = registry[name].render(entry["figures"], plots)
        heading, _, body = fragment.partition("\n")
        out.append(f'{heading}<a id="{_anchor(name)}"></a>')
        out.append(
            f"\n_Measured {entry['measured_at']}, {'quick' if entry['quick'] else 'full'} size, "
            f"{entry['seconds']:.0f} s; {_machine_line(entry['machine'])}._"
        )
        out.append(body)
    analysis = plots / "analysis.md"
    if analysis.exists():
        out += ["", analysis.read_text().strip(), ""]
    report = docs / "BENCHMARKS.md"
    report.write_text("\n".join(out).rstrip() + "\n")
    return report


def _anchor(name: str) -> str:
    return f"section-{name}"
