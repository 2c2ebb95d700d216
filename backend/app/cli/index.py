"""`tasktracker index status|rebuild`: the HNSW indexes for operators, with the revision's SQL."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from app.cli._console import check_choice, console, run

index_app = typer.Typer(
    no_args_is_help=True, help="HNSW indexes: status (health, size, last build), rebuild."
)
ENTITIES = ("messages", "atoms", "all")


@index_app.command("status")
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Each HNSW index: exists, valid, definition right, size, last build, a build running now."""

    reports = run(_reports)
    if as_json:
        sys.stdout.write(json.dumps([r.as_dict() for r in reports], indent=2) + "\n")
        return
    console.print(_table(reports))
    for report in reports:
        console.print(f"{report.name}: {_build_note(report)}", highlight=False)


@index_app.command("rebuild")
def rebuild(
    entity: Annotated[str, typer.Option(help="messages, atoms or all.")] = "all",
    concurrently: Annotated[
        bool,
        typer.Option(
            "--concurrently/--blocking",
            help="REINDEX CONCURRENTLY (writes go on; the default) or a plain build that blocks "
            "writes and is faster.",
        ),
    ] = True,
) -> None:
    """Build the indexes again, with progress; a wrong or INVALID one is dropped and built."""

    check_choice("--entity", entity, ENTITIES)
    run(lambda: _rebuild(entity, concurrently))


async def _reports() -> list[Any]:
    from app.db import check_database, migration_engine
    from app.indexes.status import index_reports

    engine = migration_engine()
    try:
        await check_database(engine)
        async with engine.connect() as conn:
            return await index_reports(conn)
    finally:
        await engine.dispose()


async def _rebuild(entity: str, concurrently: bool) -> None:
    from app.core.config import get_settings
    from app.db import check_database, migration_engine
    from app.indexes.build import BuildOptions, IndexBuilder
    from app.indexes.catalog import active_vector_indexes
    from app.indexes.progress import make_reporter

    options = BuildOptions.from_settings(get_settings())
    engine = migration_engine()
    try:
        await check_database(engine)
        async with engine.connect() as conn:
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")

            def work(sync_conn: Any) -> None:
                builder = IndexBuilder(sync_conn, options, make_reporter(sys.stderr))
                # With the opclass of each entity's active space (halfvec or vector).
                for index in active_vector_indexes(builder.execute):
                    if entity in ("all", index.table):
                        builder.rebuild(index, concurrently=concurrently)

            await autocommit.run_sync(work)
    finally:
        await engine.dispose()


def _table(reports: list[Any]) -> Any:
    from rich.table import Table

    from app.core.sizes import human

    table = Table(title="HNSW indexes")
    for column in ("index", "exists", "valid", "definition ok", "size"):
        table.add_column(column, no_wrap=True)
    for report in reports:
        table.add_row(
            report.name,
            _yes(report.exists),
            _yes(report.valid),
            _yes(report.definition_ok),
            human(report.size_bytes) if report.exists else "-",
        )
    return table


def _build_note(report: Any) -> str:
    if report.building:
        return f"[yellow]building now: {report.building}[/]"
    note = report.last_build
    if not note:
        return "no build recorded (built outside tasktracker)" if report.exists else "missing"
    spilled = " [red]spilled[/]" if note.get("spilled") else ""
    when = str(note.get("built_at", "")).replace("T", " ")[:16]
    return (
        f"last built {when} UTC in {note.get('seconds')} s, {note.get('rows', 0):,} rows, {note.get('how')}, "
        f"mwm {note.get('maintenance_work_mem')}{spilled}"
    )


def _yes(value: bool) -> str:
    return "[green]yes[/]" if value else "[red]no[/]"
