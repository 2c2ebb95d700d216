"""`tasktracker backfill` / backend/scripts/backfill_embeddings.py: the options, then the run.

The run (app.cli.backfill_run) pulls in the database layer and the providers; it is imported
when the command runs, so `tasktracker --help` and the other commands start without it.
"""

from __future__ import annotations

from typing import Annotated, Literal, cast

import typer

from app.cli._console import check_choice, console, run
from app.core.config import get_settings

ENTITY_CHOICES = ("messages", "atoms", "all")


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
    check_choice("--entity", entity, ENTITY_CHOICES)
    from app.cli.backfill_run import BackfillArgs, backfill_command

    entity_name = cast(Literal["messages", "atoms", "all"], entity)
    args = BackfillArgs(
        entity_name, page_size, limit, provider, dry_run, stale, retry_failed, inline, wait
    )
    code = run(lambda: backfill_command(args, get_settings(), console))
    raise typer.Exit(code)
