"""The `tasktracker` command line: status, services, worker, api, backfill, demo, ..."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar, cast

import typer
from rich.console import Console
from rich.table import Table

from app.commands.embeddings import embeddings_app
from app.commands.index import index_app
from app.commands.tokens import token_app
from app.core.config import get_settings
from app.core.errors import AppError

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")


@app.callback()
def _root() -> None:
    """tasktracker: chat messages in, searchable knowledge out."""
    from app.core.log import configure_logging

    configure_logging(get_settings().log_level, get_settings().log_format)


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; an AppError ends the process with one clear line, not a traceback.

    SIGTERM is handled like Ctrl-C: the coroutine's cleanup (child processes, embedded
    servers) runs before the process exits.
    """
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return asyncio.run(coro_fn())  # type: ignore[arg-type]
    except AppError as exc:
        err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None


def coverage_table(rows: list[Any], indexes: list[Any]) -> Table:
    """The coverage table: entity, total, embedded, coverage %, and the index health."""
    table = Table(title="Embedding coverage")
    for column in ("entity", "total", "embedded", "coverage %", "stale", "pending", "parked"):
        table.add_column(column, justify="left" if column == "entity" else "right")
    for row in rows:
        table.add_row(
            row.entity,
            str(row.total),
            str(row.embedded),
            f"{row.coverage_pct:.1f}",
            str(row.stale),
            str(row.pending),
            str(row.parked),
        )
    index_table = Table(title="Vector indexes")
    for column in ("index", "table", "exists", "valid", "definition ok"):
        index_table.add_column(column)
    for index in indexes:
        index_table.add_row(
            index.name, index.table, _yes(index.exists), _yes(index.valid), _yes(index.matches)
        )
    outer = Table.grid(padding=(1, 0))
    outer.add_row(table)
    outer.add_row(index_table)
    return outer


def spaces_table(spaces: list[Any]) -> Table:
    """Each embedding space: state, model, column, coverage, rate and ETA."""
    table = Table(title="Embedding spaces")
    for column in ("entity", "state", "model", "dims", "column", "coverage", "rows/s", "ETA"):
        table.add_column(column)
    for space in spaces:
        eta = space.eta_seconds
        table.add_row(
            space.entity,
            space.state + (f" ({space.phase})" if space.phase else ""),
            f"{space.provider}: {space.model}",
            f"{space.dimensions} {space.storage}",
            space.column,
            f"{space.current}/{space.total} ({space.coverage_pct:.1f}%)",
            f"{space.rows_per_second:.1f}",
            "stalled" if eta is None else f"{eta:.0f} s",
        )
    return table


def _yes(value: bool) -> str:
    return "[green]yes[/]" if value else "[red]no[/]"


def parked_table(reasons: list[Any]) -> Table:
    """Why rows are parked, and how to retry them."""
    table = Table(title="Parked rows (retry: tasktracker backfill --retry-failed)")
    for column in ("entity", "rows", "reason"):
        table.add_column(column, justify="right" if column == "rows" else "left")
    for reason in reasons:
        table.add_row(reason.entity, str(reason.rows), reason.reason)
    return table


async def _status() -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    from app.db import check_database, create_engine, session_factory
    from app.services import status_service

    settings = get_settings()
    engine = create_engine(pool_size=1, max_overflow=0)
    try:
        await check_database(engine)
        async with session_factory(engine)() as session:
            rows = await status_service.coverage(
                session, max_attempts=settings.embedding_max_attempts
            )
            indexes = await status_service.index_states(session)
            reasons = await status_service.parked_reasons(
                session, max_attempts=settings.embedding_max_attempts
            )
            spaces = await status_service.space_coverage(
                session, max_attempts=settings.embedding_max_attempts
            )
        return rows, indexes, reasons, spaces
    finally:
        await engine.dispose()


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Embedding coverage per entity and the health of the HNSW indexes."""
    rows, indexes, reasons, spaces = run(_status)
    if as_json:
        payload = {
            "coverage": [row.as_dict() for row in rows],
            "indexes": [{**vars(index), "healthy": index.healthy} for index in indexes],
            "parked": [vars(reason) for reason in reasons],
            "spaces": [space.as_dict() for space in spaces],
        }
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    console.print(coverage_table(rows, indexes))
    console.print(spaces_table(spaces))
    if reasons:
        console.print(parked_table(reasons))


@app.command()
def worker(
    no_sweeper: Annotated[
        bool, typer.Option("--no-sweeper", help="Do not run the sweeper.")
    ] = False,
) -> None:
    """Consume embedding and extraction tasks from NATS JetStream until SIGINT/SIGTERM."""
    from app.tasks.worker import run_worker

    run(lambda: run_worker(get_settings(), sweeper=not no_sweeper))


@app.command()
def services(
    show_status: Annotated[bool, typer.Option("--status", help="Tell what runs where.")] = False,
    host: Annotated[str | None, typer.Option(help="API host.")] = None,
    port: Annotated[int | None, typer.Option(help="API port.")] = None,
    migrate: Annotated[bool, typer.Option(help="Run `alembic upgrade head` first.")] = True,
) -> None:
    """Run Postgres, NATS, the worker and the API in the foreground; Ctrl-C stops them all."""
    from app.services_runner import print_services_status, run_services

    if show_status:
        print_services_status(console)
        return
    settings = get_settings()
    try:
        code = run_services(
            settings,
            host=host or settings.api_host,
            port=port or settings.api_port,
            migrate=migrate,
            console=console,
        )
    except AppError as exc:
        err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@app.command()
def backfill(
    entity: Annotated[str, typer.Option(help="messages, atoms or all.")] = "all",
    page_size: Annotated[
        int, typer.Option(min=1, max=10_000, help="Ids per page (one task each).")
    ] = 500,
    limit: Annotated[
        int | None, typer.Option(min=1, help="At most this many rows per entity.")
    ] = None,
    provider: Annotated[
        str | None, typer.Option(help="Provider id (default: the default provider).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be queued, then exit.")
    ] = False,
    stale: Annotated[
        bool, typer.Option("--stale", help="Include rows embedded by another model.")
    ] = False,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Include parked rows.")
    ] = False,
    inline: Annotated[
        bool, typer.Option("--inline", help="Embed in this process; no worker needed.")
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow coverage to 100%; exit 1 if it stalls.")
    ] = False,
) -> None:
    """Queue (or embed) every row without a current embedding, in keyset pages."""
    from app.commands.backfill import BackfillArgs, backfill_command

    if entity not in ("messages", "atoms", "all"):
        err_console.print(
            f"[bold red]error:[/] --entity must be messages, atoms or all, not {entity!r}"
        )
        raise typer.Exit(2)
    entity_name = cast(Literal["messages", "atoms", "all"], entity)
    args = BackfillArgs(
        entity_name, page_size, limit, provider, dry_run, stale, retry_failed, inline, wait
    )
    code = run(lambda: backfill_command(args, get_settings(), console))
    raise typer.Exit(code)


@app.command()
def demo(
    provider: Annotated[str, typer.Option(help="local (default), openai or ollama.")] = "local",
    scale: Annotated[int, typer.Option(min=0, max=1_000_000, help="Add N generated messages.")] = 0,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the demo database afterwards.")
    ] = False,
    serve: Annotated[
        bool, typer.Option("--serve", help="Leave the API and worker running.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the measured figures as JSON.")
    ] = False,
) -> None:
    """Replay the outage and the cure end to end on the embedded defaults (about a minute)."""
    from app.demo.runner import DemoOptions, dump_json, run_demo

    if provider not in ("local", "openai", "ollama"):
        err_console.print(
            f"[bold red]error:[/] --provider must be local, openai or ollama, not {provider!r}"
        )
        raise typer.Exit(2)
    options = DemoOptions(provider=provider, scale=scale, keep=keep, serve=serve, as_json=as_json)
    report = run(lambda: run_demo(options, get_settings(), console))
    if as_json:
        sys.stdout.write(dump_json(report) + "\n")


app.add_typer(token_app, name="token")
app.add_typer(index_app, name="index")
app.add_typer(embeddings_app, name="embeddings")

BENCH_SECTIONS = ("pipeline", "search", "index", "api")
NAMED_ONLY = ("migrate", "scale", "freshness", "load", "faults", "switch")


@app.command("bench")
def bench(
    what: Annotated[
        str,
        typer.Argument(
            help="pipeline, search, index, api or all (the four); migrate, scale, freshness, load, "
            "faults or switch."
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
        err_console.print(
            f"[red]unknown benchmark {what!r}.[/] Fix: one of "
            f"{', '.join((*BENCH_SECTIONS, *NAMED_ONLY))}, all"
        )
        raise typer.Exit(2)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        err_console.print(
            "[red]the benchmarks need the bench dependency group.[/] Fix: uv run --group bench "
            "tasktracker bench ... (or just bench)"
        )
        raise typer.Exit(2) from None
    from app.bench import suite

    if report_only:
        path = suite.write_report(suite.load(suite.DOCS / "bench" / "results.json"))
        console.print(f"wrote {path}")
        return

    async def go() -> Any:
        return await suite.run(get_settings(), names, quick=quick, progress=console.print)

    path = run(go)
    console.print(f"wrote {path}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
