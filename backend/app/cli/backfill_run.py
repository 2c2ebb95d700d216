"""What `tasktracker backfill` does once its options are read: plan, queue or embed, follow."""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass
from typing import Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from app.cli._console import coverage_table
from app.core.config import Settings
from app.core.errors import ServiceUnavailableError
from app.db import check_database, create_engine, session_factory
from app.embedding import provider_service
from app.embedding import status as status_service
from app.embedding.backfill import (
    BackfillPlan,
    BackfillReport,
    plan_counts,
    run_backfill,
    wait_for_coverage,
)
from app.embedding.embedding_service import EmbeddingService
from app.embedding.entities import ENTITIES, Entity
from app.embedding.jobs import embed_rows
from app.embedding.providers import ProviderSpec, build_provider


@dataclass
class BackfillArgs:
    entity: Literal["messages", "atoms", "all"] = "all"
    page_size: int = 500
    limit: int | None = None
    provider: str | None = None
    dry_run: bool = False
    stale: bool = False
    retry_failed: bool = False
    inline: bool = False
    wait: bool = False


class Reporter:
    """A progress bar on a terminal, plain lines otherwise."""

    def __init__(self, console: Console, totals: dict[str, int]):
        self.console = console
        self.interactive = console.is_terminal
        self.totals = totals
        self.done = dict.fromkeys(totals, 0)
        self.progress: Progress | None = None
        self.tasks: dict[str, TaskID] = {}

    def __enter__(self) -> Reporter:
        if self.interactive:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.progress.start()
            for name, total in self.totals.items():
                self.tasks[name] = self.progress.add_task(f"{name} queued", total=total)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def page(self, entity: Entity, count: int) -> None:
        self.done[entity.name] += count
        if self.progress is not None:
            self.progress.update(self.tasks[entity.name], advance=count)
        else:
            # Plain lines (not a terminal): one per tenth of the work, not one per page.
            done, total = self.done[entity.name], max(1, self.totals[entity.name])
            if done >= total or done * 10 // total != (done - count) * 10 // total:
                self.console.print(f"{entity.name}: {done}/{total} handed over")


def _entities(args: BackfillArgs) -> list[Entity]:
    return list(ENTITIES.values()) if args.entity == "all" else [ENTITIES[args.entity]]


async def backfill_command(args: BackfillArgs, settings: Settings, console: Console) -> int:
    """Run the backfill; returns the process exit code."""
    engine = create_engine(settings=settings)
    try:
        await check_database(engine)
        async with session_factory(engine)() as session:
            spec = await provider_service.resolve_spec(
                session, uuid.UUID(args.provider) if args.provider else None, settings
            )
            await provider_service.check_fits_column(session, spec)
        plan = BackfillPlan(
            entities=_entities(args),
            page_size=args.page_size,
            limit=args.limit,
            # --stale: rows another model made than the one that embeds now (the worker's
            # claim takes them: it embeds rows whose model is not its space's provider's)
            model=spec.model if args.stale else None,
            retry_failed=args.retry_failed,
            max_attempts=settings.embedding_max_attempts,
        )
        counts = await plan_counts(engine, plan)
        console.print("to embed: " + ", ".join(f"{name} {count}" for name, count in counts.items()))
        if args.dry_run:
            return 0
        if sum(counts.values()) == 0:
            console.print("nothing to do: every row has a current embedding")
            await _print_coverage(engine, settings, console)
            return 0
        report = await (
            _inline(engine, plan, spec, settings, console, counts)
            if args.inline
            else _enqueue(engine, plan, args, console, counts)
        )
        console.print(
            f"handed over {sum(report.handled.values())} rows in {report.seconds:.1f}s ({report.rate:,.0f} rows/s)"
        )
        code = 0
        if args.wait or args.inline:
            left = await wait_for_coverage(
                engine, plan, stall_seconds=30.0 if args.wait else 0.0, on_poll=None
            )
            if sum(left.values()):
                console.print(f"[red]still without a current embedding:[/] {left}")
                code = 1
        await _print_coverage(engine, settings, console)
        return code
    finally:
        await engine.dispose()


async def _enqueue(
    engine: AsyncEngine,
    plan: BackfillPlan,
    args: BackfillArgs,
    console: Console,
    counts: dict[str, int],
) -> BackfillReport:
    from app.broker import broker, worker_seen
    from app.embedding.tasks import enqueuer

    try:
        await broker.startup()
    except Exception as exc:  # noqa: BLE001 - any connection failure gets the same advice
        raise ServiceUnavailableError(
            f"cannot reach NATS ({type(exc).__name__}: {exc}). Fix: start it (`just services`), "
            "set NATS_URL, or embed in this process with --inline."
        ) from exc
    try:
        with Reporter(console, counts) as reporter:
            report = await run_backfill(
                engine, plan, enqueue=enqueuer(args.provider), on_page=reporter.page
            )
        if not await worker_seen():
            console.print(
                "[yellow]no worker is consuming the queue yet:[/] run `just services` (or `tasktracker worker`), or use --inline"
            )
        return report
    finally:
        await broker.shutdown()


async def _inline(
    engine: AsyncEngine,
    plan: BackfillPlan,
    spec: ProviderSpec,
    settings: Settings,
    console: Console,
    counts: dict[str, int],
) -> BackfillReport:
    service = EmbeddingService(
        build_provider(spec),
        batch_size=settings.embedding_batch_size,
        max_concurrency=settings.embedding_max_concurrency,
        max_retries=settings.embedding_max_retries,
    )

    async def embed_page(entity: Entity, ids: list[uuid.UUID]) -> object:
        return await embed_rows(
            engine,
            entity,
            ids,
            service,
            model=spec.model,
            max_attempts=settings.embedding_max_attempts,
        )

    try:
        with Reporter(console, counts) as reporter:
            return await run_backfill(engine, plan, embed_page=embed_page, on_page=reporter.page)
    finally:
        await service.aclose()


async def _print_coverage(engine: AsyncEngine, settings: Settings, console: Console) -> None:
    async with session_factory(engine)() as session:
        rows = await status_service.coverage(session, max_attempts=settings.embedding_max_attempts)
        indexes = await status_service.index_states(session)
    console.print(coverage_table(rows, indexes))
    sys.stdout.flush()
