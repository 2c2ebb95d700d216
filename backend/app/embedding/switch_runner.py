"""The steps of a switch as the CLI and the API drive them: probe, start and fill, wait, index,
cut over. Each is safe to run again; what is done is read back from the database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.core.errors import DimensionMismatchError, ServiceUnavailableError
from app.db import migration_engine, session_factory
from app.embedding import status as status_service
from app.embedding.embedding_service import EmbeddingService
from app.embedding.providers import build_provider
from app.embedding.queue import Enqueue
from app.embedding.spaces import Space, load_spaces
from app.embedding.switch import (
    Target,
    fill,
    missing,
    pending_indexes,
    set_phase,
    start,
    target_index,
)
from app.indexes.build import BuildOptions, IndexBuilder
from app.indexes.progress import BuildReporter

Say = Callable[[str], None]


async def probe(target: Target) -> None:
    """One call to the target provider: it answers, and with the dimension it claims."""
    service = EmbeddingService(build_provider(target.spec), max_retries=2)
    try:
        outcome = (await service.embed_documents(["tasktracker embedding switch probe"]))[0]
    finally:
        await service.aclose()
    if outcome.vector is None:
        raise ServiceUnavailableError(
            f"the probe of {target.spec.name} failed: {outcome.error}. Fix: check the provider"
        )
    if int(outcome.vector.shape[0]) != target.spec.dimensions:  # pragma: no cover - validated
        raise DimensionMismatchError(f"{target.spec.name} returned another dimension")


async def begin(
    engine: AsyncEngine, settings: Settings, target: Target, enqueue: Enqueue
) -> tuple[list[Space], dict[str, int]]:
    """Start (or resume) the switch and publish what the target lacks."""
    await probe(target)
    spaces = await start(engine, target)
    queued = await fill(
        engine,
        enqueue,
        spaces,
        batch_size=settings.task_batch_size,
        max_attempts=settings.embedding_max_attempts,
        requeue_after_seconds=settings.sweeper_requeue_seconds,
    )
    return spaces, queued


async def coverage(engine: AsyncEngine, settings: Settings) -> list[status_service.SpaceCoverage]:
    async with session_factory(engine)() as session:
        return await status_service.space_coverage(
            session, max_attempts=settings.embedding_max_attempts
        )


async def wait_filled(
    engine: AsyncEngine,
    settings: Settings,
    say: Say,
    *,
    stall_seconds: float = 120.0,
    poll_seconds: float = 2.0,
) -> int:
    """Until every target lacks no row but those in flight (written in the last seconds, queued
    for it) or stops moving; says the progress every few seconds. Returns the rows left."""
    last, moved, told = None, time.monotonic(), 0.0
    while True:
        targets = [c for c in await coverage(engine, settings) if c.state == "target"]
        left = await _backlog(engine, settings)
        if time.monotonic() - told > 5 or left == 0:
            told = time.monotonic()
            say("; ".join(_progress_line(c) for c in targets))
        if left == 0:
            return 0
        if left != last:
            last, moved = left, time.monotonic()
        elif time.monotonic() - moved > stall_seconds:
            return left
        await asyncio.sleep(poll_seconds)


async def _backlog(engine: AsyncEngine, settings: Settings) -> int:
    """Rows a target lacks that are not parked and not in flight."""
    async with engine.connect() as conn:
        total = 0
        for space in await load_spaces(conn):
            if space.state == "target":
                left, parked = await missing(conn, space, settings.embedding_max_attempts)
                total += left - parked
        return total


def _progress_line(c: status_service.SpaceCoverage) -> str:
    eta = "stalled" if c.eta_seconds is None else f"ETA {c.eta_seconds:.0f} s"
    return (
        f"{c.entity} -> {c.model}: {c.current}/{c.total} ({c.coverage_pct:.1f}%), "
        f"{c.rows_per_second:.1f} rows/s, {eta}"
    )


def build_indexes(settings: Settings, spaces: Sequence[Space], reporter: BuildReporter) -> Any:
    """The targets' HNSW indexes, CONCURRENTLY, with the memory check and progress."""

    async def run() -> None:
        engine = migration_engine(settings=settings)
        try:
            async with engine.connect() as conn:
                auto = await conn.execution_options(isolation_level="AUTOCOMMIT")

                def work(sync_conn: Any) -> None:
                    builder = IndexBuilder(
                        sync_conn, BuildOptions.from_settings(settings), reporter
                    )
                    for space in spaces:
                        builder.build_one(target_index(space))

                await auto.run_sync(work)
        finally:
            await engine.dispose()

    return run()


async def index_targets(engine: AsyncEngine, settings: Settings, reporter: BuildReporter) -> None:
    """Build the pending-work and HNSW indexes of every target that lacks them (phase
    indexing, then ready)."""
    async with engine.connect() as conn:
        targets = [s for s in await load_spaces(conn) if s.state == "target"]
    if not targets:
        return
    ids = [s.id for s in targets if s.id is not None]
    await set_phase(engine, ids, "indexing")
    direct = migration_engine(settings=settings)  # CONCURRENTLY: outside any transaction
    try:
        await pending_indexes(direct, targets)
    finally:
        await direct.dispose()
    await build_indexes(settings, targets, reporter)
    await set_phase(engine, ids, "ready")
