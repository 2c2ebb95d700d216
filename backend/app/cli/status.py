"""`tasktracker status`: embedding coverage per entity, parked rows and the HNSW indexes."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from app.cli._console import console, coverage_table, parked_table, run, spaces_table
from app.core.config import get_settings


async def _status() -> tuple[list[Any], list[Any], list[Any], list[Any], Any]:
    # Imported when the command runs: `tasktracker --help` stays quick without the database layer.
    from app.db import check_database, check_migrated, create_engine, session_factory
    from app.embedding import status as status_service

    settings = get_settings()
    engine = create_engine(pool_size=1, max_overflow=0)
    try:
        await check_database(engine)
        await check_migrated(engine)
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
            memory = await status_service.server_memory(session)
        return rows, indexes, reasons, spaces, memory
    finally:
        await engine.dispose()


def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Embedding coverage per entity and the health of the HNSW indexes."""
    from app.replica import replica_health

    rows, indexes, reasons, spaces, memory = run(_status)
    replica = run(lambda: replica_health(get_settings()))
    if as_json:
        payload: dict[str, Any] = {
            "coverage": [row.as_dict() for row in rows],
            "indexes": [{**vars(index), "healthy": index.healthy} for index in indexes],
            "parked": [vars(reason) for reason in reasons],
            "spaces": [space.as_dict() for space in spaces],
            "memory": memory.as_dict(),
        }
        if replica is not None:
            payload["read_replica"] = {
                "serving": replica.serving,
                "lag_seconds": replica.lag_seconds,
                "reason": replica.reason,
            }
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    console.print(coverage_table(rows, indexes))
    console.print(spaces_table(spaces))
    if reasons:
        console.print(parked_table(reasons))
    colour = "green" if memory.indexes_fit else "yellow"
    console.print(f"[{colour}]memory:[/] {memory.describe()}", highlight=False)
    if replica is not None:
        lag = "unknown" if replica.lag_seconds is None else f"{replica.lag_seconds:.1f} s"
        state = (
            "[green]serving[/]" if replica.serving else "[red]not serving[/] (reads on the primary)"
        )
        console.print(f"read replica: {state}, replay lag {lag}: {replica.reason}")
