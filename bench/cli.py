"""The benchmarks' command: `python -m bench [SECTION]`, also `tasktracker bench` in a checkout."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from app.cli._console import console, fail, run
from app.core.config import get_settings

BENCH_SECTIONS = ("pipeline", "search", "index", "api")
NAMED_ONLY = (
    "migrate",
    "scale",
    "halfvec",
    "real",
    "freshness",
    "pooler",
    "load",
    "faults",
    "workers",
    "switch",
)


def bench(
    what: Annotated[
        str,
        typer.Argument(
            help="pipeline, search, index, api or all (the four); migrate, scale, freshness, load, "
            "faults, pooler (the API behind PgBouncer in transaction mode), halfvec (1,000,000 x 1536 stored as halfvec), real (the local model's embeddings of a "
            "real corpus beside the generator), workers (1, 2, 4 worker processes and a 3-node cluster: docs/SCALING.md) or "
            "switch (an embedding-model switch of 100,000 rows)."
        ),
    ] = "all",
    quick: Annotated[
        bool, typer.Option("--quick", help="Small sizes, one or two rounds (under 5 minutes).")
    ] = False,
    report_only: Annotated[
        bool, typer.Option("--report-only", help="Rewrite docs/BENCHMARKS.md from the JSON.")
    ] = False,
) -> None:
    """Benchmarks side by side: writes docs/BENCHMARKS.md, docs/bench/*.png and results.json."""
    names = list(BENCH_SECTIONS) if what == "all" else [what]
    # the others run only when named: `bench all` stays the four speed sections.
    if what != "all" and what not in (*BENCH_SECTIONS, *NAMED_ONLY):
        fail(
            f"unknown benchmark {what!r}. Fix: one of "
            f"{', '.join((*BENCH_SECTIONS, *NAMED_ONLY))}, all"
        )
    if what == "workers":
        _bench_workers(quick)
        return
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        fail(
            "the benchmarks need the bench dependency group. Fix: uv run --group bench "
            "tasktracker bench ... (or just bench)"
        )
    from bench import suite

    if report_only:
        path = suite.write_report(suite.load(suite.DOCS / "bench" / "results.json"))
        console.print(f"wrote {path}")
        return

    async def go() -> Any:
        return await suite.run(get_settings(), names, quick=quick, progress=console.print)

    path = run(go)
    console.print(f"wrote {path}")


def _bench_workers(quick: bool) -> None:
    """Worker scaling figures into docs/bench/workers.json and docs/SCALING.md."""
    from bench import workers

    figures = run(lambda: workers.run(get_settings(), quick=quick))
    console.print(workers.render(figures))
    console.print(f"wrote {workers.write(figures)}")


def main() -> None:
    """`python -m bench`: the benchmarks' own entry point."""
    typer.run(bench)
