"""`tasktracker embeddings switch|status|cutover|rollback|finish`: change the model online."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer

embeddings_app = typer.Typer(
    no_args_is_help=True,
    help="Embedding spaces: switch to another model or dimension online, cut over, roll back.",
)
T = TypeVar("T")


async def _with_engine(work: Callable[[Any, Any], Awaitable[T]]) -> T:
    from app.core.config import get_settings
    from app.db import check_database, create_engine

    settings = get_settings()
    engine = create_engine(settings=settings, pool_size=2, max_overflow=2)
    try:
        await check_database(engine)
        return await work(engine, settings)
    finally:
        await engine.dispose()


@embeddings_app.command("switch")
def switch(
    provider: Annotated[
        str, typer.Option(help="The provider's name (or `settings` for EMBEDDING_*).")
    ],
    storage: Annotated[str, typer.Option(help="vector, or halfvec (half the size).")] = "vector",
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the fill to 100%, then build the HNSW index.")
    ] = False,
) -> None:
    """Start (or resume) a switch: new columns, the fill queued to the workers."""
    from app.cli._console import console, run

    async def work(engine: Any, settings: Any) -> int:
        return await _switch(engine, settings, provider, storage, wait, console.print)

    raise typer.Exit(run(lambda: _with_engine(work)))


async def _switch(
    engine: Any, settings: Any, provider: str, storage: str, wait: bool, say: Any
) -> int:
    from app.broker import broker
    from app.embedding import switch_runner as runner
    from app.embedding.switch import resolve_target
    from app.embedding.tasks import enqueuer
    from app.indexes.progress import make_reporter

    async with engine.connect() as conn:
        target = await resolve_target(conn, settings, provider, storage)
    await broker.startup()
    try:
        spaces, queued = await runner.begin(engine, settings, target, enqueuer(None))
    finally:
        await broker.shutdown()
    say(
        f"switch to {spaces[0].describe()}: queued "
        + ", ".join(f"{k} {v}" for k, v in queued.items())
    )
    if not wait:
        say("follow it with `tasktracker embeddings status`; `--wait` builds the index at 100%")
        return 0
    if await runner.wait_filled(engine, settings, say):
        say(
            "[red]the fill stalled[/]: is a worker running? (`tasktracker worker`); run again to resume"
        )
        return 1
    await runner.index_targets(engine, settings, make_reporter(sys.stderr))
    say("ready: `tasktracker embeddings cutover` makes it the active space")
    return 0


@embeddings_app.command("status")
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Each embedding space: state, model, coverage, rate, ETA."""
    from app.cli._console import console, run, spaces_table
    from app.embedding import switch_runner as runner

    rows = run(lambda: _with_engine(runner.coverage))
    if as_json:
        sys.stdout.write(json.dumps([r.as_dict() for r in rows], indent=2) + "\n")
        return
    console.print(spaces_table(rows))


@embeddings_app.command("cutover")
def cutover(
    force: Annotated[
        bool, typer.Option("--force", help="Cut over below 100% (search skips the rest).")
    ] = False,
) -> None:
    """Make the target the active space (its index is built first if missing)."""
    from app.cli._console import console, run

    async def work(engine: Any, settings: Any) -> str:
        from app.embedding import switch_runner as runner
        from app.embedding.switch import cutover as cut
        from app.indexes.progress import make_reporter

        await runner.index_targets(engine, settings, make_reporter(sys.stderr))
        spaces = await cut(engine, force=force, max_attempts=settings.embedding_max_attempts)
        active = [s for s in spaces if s.state == "active"]
        return f"cut over: {active[0].describe()} is active; `tasktracker embeddings finish` drops the old space, `rollback` restores it"

    console.print(run(lambda: _with_engine(work)))


@embeddings_app.command("rollback")
def rollback() -> None:
    """After a cutover: the previous space active again. Before: abandon the switch."""
    from app.cli._console import console, run
    from app.embedding.switch import rollback as back

    console.print(run(lambda: _with_engine(lambda engine, _s: back(engine))))


@embeddings_app.command("finish")
def finish() -> None:
    """Drop the previous space's column and index: the switch is over."""
    from app.cli._console import console, run
    from app.embedding.switch import finish as done

    console.print(run(lambda: _with_engine(lambda engine, _s: done(engine))))
