"""What every command shares: the consoles, `run` (one clear line for an AppError), the tables."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from app.core.errors import AppError

console = Console()
err_console = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; an AppError ends the process with one clear line, not a traceback.

    SIGTERM is handled like Ctrl-C: the coroutine's cleanup (child processes, embedded
    servers) runs before the process exits.
    """
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return asyncio.run(coro_fn())  # type: ignore[arg-type]
    except AppError as exc:
        fail(exc.message, code=1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None


def fail(message: str, *, code: int = 2) -> NoReturn:
    """One red line on stderr, then exit (2: the command line was wrong)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code) from None


def check_choice(option: str, value: str, allowed: Iterable[str]) -> None:
    """Exit 2 naming the option and its choices when `value` is not one of them."""
    choices = list(allowed)
    if value not in choices:
        spelled = f"{', '.join(choices[:-1])} or {choices[-1]}" if len(choices) > 1 else choices[0]
        fail(f"{option} must be {spelled}, not {value!r}")


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
