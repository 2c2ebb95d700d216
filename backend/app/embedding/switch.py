"""Switch an entity's embeddings to another model online: start, fill, index, cutover, rollback,
finish. Every step keeps its state in the database and may be run again after a crash.

1. `start` records a `target` space per entity and adds its columns (`embedding_next` of the
   new dimension and storage type, with the slot's hash, lease and error columns); no index
   on them yet, and the table's fillfactor lowered to SWITCH_FILLFACTOR (see below).
2. `fill` publishes the rows the target lacks, in keyset pages, to the same queue and workers
   (tasks name their space); every row written meanwhile is queued for every writable space
   (app.embedding.queue.publish) and the sweeper fills what a lost task left.
3. `switch_runner.index_targets` builds the target's pending-work index and HNSW index
   CONCURRENTLY once the fill is done.
4. `cutover` renames, in one short transaction, the active columns and indexes to `_prev` and
   the target's to the seed's names: `messages.embedding` and `messages_embedding_hnsw_idx`
   always name the active space. Refused below 100% coverage unless forced.
5. `rollback` puts the previous space back (or abandons a switch not cut over); `finish` drops
   the previous space's columns (their indexes go with them).

Why the fill writes no index: every row of the fill is updated three times (queued, claimed,
written), and a non-HOT update inserts the row again into every index of the table, the active
space's HNSW index among them (about 1 ms a row at 100,000 rows: the fill ran at 245 rows/s).
An update is HOT (no index touched) when it changes no indexed column, a partial index's
predicate included, and the new version fits on the row's page. So the target has no index
until the fill is done, and the table's fillfactor is lowered for the switch: a row's first
update moves it to a page with room, its next ones stay there (only the first inserts into the
indexes). The fillfactor is put back at the cutover or when the switch is abandoned.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import asyncpg
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.config import Settings
from app.core.errors import ConflictError, NotFoundError, ValidationError
from app.embedding import provider_service
from app.embedding.entities import ENTITIES, SLOT_COLUMNS, Entity
from app.embedding.providers import ProviderSpec
from app.embedding.queue import Enqueue, PendingFilter, pending_pages, publish
from app.embedding.spaces import Space, load_spaces
from app.indexes.catalog import VectorIndex
from app.models.embedding_space import SLOT_SUFFIX, STORAGE_TYPES

logger = logging.getLogger(__name__)
SWITCH_LOCK = "SELECT pg_advisory_xact_lock(hashtext('embedding_spaces.switch'))"
LOCK_TIMEOUT = "2s"
DDL_ATTEMPTS = 15
CMD = "tasktracker embeddings"
# The fillfactor a switch gives the tables it fills (reset after, unless it was set before).
SWITCH_FILLFACTOR = 50


@dataclass(frozen=True)
class Target:
    """What a switch moves to."""

    spec: ProviderSpec
    provider_id: object | None
    storage: str = "vector"


def _column_types(storage: str, dims: int) -> dict[str, str]:
    types = {
        "embedding": f"{storage}({int(dims)})",
        "embedding_model": "text",
        "embedded_at": "timestamptz",
        "embedding_content_hash": "text",
        "embedding_error": "text",
        "embedding_queued_at": "timestamptz",
        "embedding_attempts": "integer NOT NULL DEFAULT 0",
        "embedding_claimed_by": "text",
        "embedding_claim_expires_at": "timestamptz",
    }
    return {name: types[name] for name in SLOT_COLUMNS}


def _index_name(table: str, suffix: str) -> str:
    return f"{table}_embedding{suffix}_hnsw_idx"


def _rename_sql(table: str, source: str, dest: str) -> list[str]:
    """Move a slot's columns and indexes from one suffix to another."""
    statements = [
        f"ALTER TABLE {table} RENAME COLUMN {name}{source} TO {name}{dest}" for name in SLOT_COLUMNS
    ]
    statements += [
        f"ALTER INDEX IF EXISTS {_index_name(table, source)} RENAME TO {_index_name(table, dest)}",
        f"ALTER INDEX IF EXISTS ix_{table}_embedding_pending{source} "
        f"RENAME TO ix_{table}_embedding_pending{dest}",
    ]
    return statements


def _drop_sql(table: str, suffix: str) -> str:
    """Dropping the columns drops the slot's HNSW and pending indexes with them."""
    columns = ", ".join(f"DROP COLUMN IF EXISTS {name}{suffix}" for name in SLOT_COLUMNS)
    return f"ALTER TABLE {table} {columns}"


async def _ddl(engine: AsyncEngine, work: object) -> object:
    """Run `work(conn)` in one transaction with a short lock_timeout, again while it times out:
    a DDL statement waiting on a long query would hold every query behind it."""
    for attempt in range(1, DDL_ATTEMPTS + 1):
        try:
            async with engine.begin() as conn:
                await conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
                await conn.execute(text(SWITCH_LOCK))
                return await work(conn)  # type: ignore[operator]
        except DBAPIError as exc:
            inner = getattr(exc.orig, "__cause__", None)
            if not isinstance(inner, asyncpg.LockNotAvailableError) or attempt == DDL_ATTEMPTS:
                raise
            logger.warning("embedding switch: a lock is busy; trying again (%d)", attempt)
            await asyncio.sleep(0.5 * attempt)
    raise AssertionError("unreachable")


async def resolve_target(
    conn: AsyncConnection, settings: Settings, provider: str, storage: str
) -> Target:
    """The provider named (a row of llm_providers, or `settings` for the configured one)."""
    if storage not in STORAGE_TYPES:
        raise ValidationError(f"storage must be one of {', '.join(STORAGE_TYPES)}, not {storage!r}")
    if provider in ("settings", provider_service.spec_from_settings(settings).name):
        return Target(provider_service.spec_from_settings(settings), None, storage)
    row = (
        await conn.execute(text("SELECT id FROM llm_providers WHERE name = :n"), {"n": provider})
    ).first()
    if row is None:
        raise NotFoundError(
            f"no provider named {provider!r}. Fix: create it (POST /api/v1/providers), or use "
            "`--provider settings` for the one EMBEDDING_* configure"
        )
    from sqlalchemy.ext.asyncio import AsyncSession

    async with AsyncSession(bind=conn) as session:
        spec = await provider_service.resolve_spec(session, row.id, settings)
    return Target(spec, row.id, storage)


def _matches(space: Space, target: Target) -> bool:
    return (space.provider_id, space.model, space.dimensions, space.storage) == (
        target.provider_id,
        target.spec.model,
        target.spec.dimensions,
        target.storage,
    )


async def start(engine: AsyncEngine, target: Target) -> list[Space]:
    """Record the target spaces and add their columns; resumes a switch to the same target."""

    async def work(conn: AsyncConnection) -> list[Space]:
        spaces = await load_spaces(conn)
        targets = [s for s in spaces if s.state == "target"]
        if any(s.state == "previous" for s in spaces):
            raise ConflictError(
                f"a cutover was made and not finished. Fix: `{CMD} finish` (drops the old "
                f"space) or `{CMD} rollback`, then switch"
            )
        if targets and not all(_matches(s, target) for s in targets):
            raise ConflictError(
                f"a switch to {targets[0].describe()} is under way; one at a time. Fix: "
                f"`{CMD} cutover` (then finish) or `{CMD} rollback` to abandon it"
            )
        actives = [s for s in spaces if s.state == "active"]
        if not targets and all(_matches(s, target) for s in actives):
            raise ValidationError(
                f"{target.spec.name} ({target.spec.model}, {target.spec.dimensions} dims, "
                f"{target.storage}) is already the active space: nothing to switch"
            )
        for name, entity in ENTITIES.items():
            if not any(s.entity == name for s in targets):
                await _add_target(conn, entity, target)
        return [s for s in await load_spaces(conn) if s.state == "target"]

    spaces: list[Space] = await _ddl(engine, work)  # type: ignore[assignment]
    return spaces


async def _fillfactor(conn: AsyncConnection, table: str) -> str | None:
    options = (
        await conn.execute(
            text("SELECT reloptions FROM pg_class WHERE oid = to_regclass(:t)"), {"t": table}
        )
    ).scalar()
    return next((o.split("=", 1)[1] for o in options or [] if o.startswith("fillfactor=")), None)


async def _lower_fillfactor(conn: AsyncConnection, table: str) -> None:
    """Room on the pages rows move to, so their next updates are HOT (not if one was set)."""
    if await _fillfactor(conn, table) is None:
        await conn.execute(text(f"ALTER TABLE {table} SET (fillfactor = {SWITCH_FILLFACTOR})"))


async def _restore_fillfactor(conn: AsyncConnection, table: str) -> None:
    if await _fillfactor(conn, table) == str(SWITCH_FILLFACTOR):
        await conn.execute(text(f"ALTER TABLE {table} RESET (fillfactor)"))


async def _add_target(conn: AsyncConnection, entity: Entity, target: Target) -> None:
    spec = target.spec
    await conn.execute(
        text(
            "INSERT INTO embedding_spaces (entity, state, phase, provider_id, provider_name, "
            "provider_type, model, dimensions, storage, column_name, index_name) VALUES "
            "(:entity, 'target', 'filling', :pid, :name, :type, :model, :dims, :storage, "
            ":column, :index)"
        ),
        {
            "entity": entity.name,
            "pid": target.provider_id,
            "name": spec.name,
            "type": spec.type.value,
            "model": spec.model,
            "dims": spec.dimensions,
            "storage": target.storage,
            "column": "embedding_next",
            "index": _index_name(entity.table, "_next"),
        },
    )
    await conn.execute(text(_drop_sql(entity.table, "_next")))  # leftovers of an abandoned one
    columns = ", ".join(
        f"ADD COLUMN {name}_next {kind}"
        for name, kind in _column_types(target.storage, spec.dimensions).items()
    )
    await conn.execute(text(f"ALTER TABLE {entity.table} {columns}"))
    await _lower_fillfactor(conn, entity.table)


async def pending_indexes(engine: AsyncEngine, spaces: Sequence[Space]) -> None:
    """The targets' pending-work partial indexes, built CONCURRENTLY (an INVALID one again)
    once the fill is done: the active slot has one, and the target's becomes it at the
    cutover. Built during the fill it would make every write of the fill a non-HOT update."""
    async with engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        for space in spaces:
            slot = space.slot
            valid = (
                await auto.execute(
                    text(
                        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c "
                        "ON c.oid = i.indexrelid WHERE c.relname = :n"
                    ),
                    {"n": slot.pending_index},
                )
            ).scalar()
            if valid is False:
                await auto.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {slot.pending_index}"))
            await auto.execute(
                text(
                    f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {slot.pending_index} ON "
                    f"{slot.table} (id) WHERE {slot.cols.needs_text}"
                )
            )


async def fill(
    engine: AsyncEngine,
    enqueue: Enqueue,
    spaces: Sequence[Space],
    *,
    batch_size: int,
    max_attempts: int,
    requeue_after_seconds: float,
) -> dict[str, int]:
    """Publish the rows each space lacks that are not on the queue already (a rerun after a
    crash publishes only what is left: rows done are skipped, rows queued recently too)."""
    counts: dict[str, int] = {}
    for space in spaces:
        slot = space.slot
        c = slot.cols
        waiting = (
            f"({c.queued_at} IS NULL OR {c.queued_at} < now() - make_interval(secs => :requeue))"
        )
        pages = pending_pages(
            engine,
            slot,
            PendingFilter(max_attempts=max_attempts),
            page_size=batch_size,
            extra_where=waiting,
            extra_params={"requeue": requeue_after_seconds},
        )
        counts[space.entity] = await _publish_pages(engine, enqueue, slot, pages, batch_size)
    return counts


# Pages published at once by a fill: marking a page queued is the first update of its rows,
# the one that moves them and enters them in the table's indexes (the rest are HOT), so one
# publisher at a time kept the fill to what one Postgres backend does.
FILL_PUBLISHERS = 3


async def _publish_pages(
    engine: AsyncEngine,
    enqueue: Enqueue,
    slot: Entity,
    pages: AsyncIterator[list[uuid.UUID]],
    batch_size: int,
) -> int:
    total = 0
    running: set[asyncio.Task[tuple[int, list[uuid.UUID]]]] = set()

    def settle(finished: set[asyncio.Task[tuple[int, list[uuid.UUID]]]]) -> int:
        return sum(task.result()[0] for task in finished)

    try:
        async for ids in pages:
            if len(running) >= FILL_PUBLISHERS:
                finished, running = await asyncio.wait(running, return_when=FIRST_COMPLETED)
                total += settle(finished)
            running.add(
                asyncio.create_task(publish(engine, enqueue, slot, ids, batch_size=batch_size))
            )
        if running:
            finished, running = await asyncio.wait(running)
            total += settle(finished)
    finally:
        for task in running:
            task.cancel()
    return total


def target_index(space: Space) -> VectorIndex:
    """The HNSW index a space's column gets."""
    return VectorIndex(space.index_name, space.entity, space.column_name, space.opclass)


async def set_phase(engine: AsyncEngine, space_ids: Sequence[int], phase: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE embedding_spaces SET phase = :p WHERE id = ANY(:ids) AND state = 'target'"
            ),
            {"p": phase, "ids": list(space_ids)},
        )


async def _index_valid(conn: AsyncConnection, index: VectorIndex) -> bool:
    row = (await conn.execute(text(index.state_sql))).first()
    return row is not None and bool(row[0]) and bool(row[1]) and bool(row[2])


# Rows written since the switch began and this recently are on their way through the queue
# (a write is published for every space): they do not hold up the end of the fill or the
# cutover (after which search counts them in `not_embedded` until they are embedded).
IN_FLIGHT_SECONDS = 30.0


async def missing(conn: AsyncConnection, space: Space, max_attempts: int) -> tuple[int, int]:
    """(rows the space lacks, not counting rows written during the switch in the last
    IN_FLIGHT_SECONDS; of which parked)."""
    slot = space.slot
    c = slot.cols
    row = (
        await conn.execute(
            text(
                f"SELECT count(*), count(*) FILTER (WHERE {c.attempts} >= :m) FROM {slot.table} "
                f"WHERE {c.needs_text} AND NOT (updated_at > now() - make_interval(secs => :recent) "
                "AND updated_at > (SELECT created_at FROM embedding_spaces WHERE id = :space))"
            ),
            {"m": max_attempts, "recent": IN_FLIGHT_SECONDS, "space": space.id},
        )
    ).one()
    return int(row[0]), int(row[1])


async def cutover(engine: AsyncEngine, *, force: bool, max_attempts: int) -> list[Space]:
    """The target becomes active, the active previous: one short transaction of renames."""

    async def work(conn: AsyncConnection) -> list[Space]:
        await conn.execute(text("SELECT id FROM embedding_spaces FOR UPDATE"))
        spaces = await load_spaces(conn)
        targets = [s for s in spaces if s.state == "target"]
        if not targets:
            raise ConflictError(f"no switch under way. Fix: `{CMD} switch --provider NAME`")
        for target in targets:
            await _ready(conn, target, force, max_attempts)
        for target in targets:
            table = ENTITIES[target.entity].table
            for statement in _rename_sql(table, "", "_prev") + _rename_sql(table, "_next", ""):
                await conn.execute(text(statement))
            await _restore_fillfactor(conn, table)
        await _restate(conn, "active", "previous", retire=False)
        await _restate(conn, "target", "active", retire=False)
        await _make_default(conn, targets[0])
        return await load_spaces(conn)

    return await _ddl(engine, work)  # type: ignore[return-value]


async def _ready(conn: AsyncConnection, target: Space, force: bool, max_attempts: int) -> None:
    pending = await conn.execute(
        text(
            "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE c.relname = :n AND i.indisvalid"
        ),
        {"n": target.slot.pending_index},
    )
    if not await _index_valid(conn, target_index(target)) or pending.first() is None:
        raise ConflictError(
            f"the {target.entity} target's HNSW or pending-work index is not built yet (the "
            f"API does not build indexes: minutes at size). Fix: `{CMD} switch --provider "
            f"{target.provider_name} --wait` builds them once the fill is done (`{CMD} status` "
            "shows the phase: indexing, then ready), or `tasktracker embeddings cutover` "
            "builds them and cuts over"
        )
    left, parked = await missing(conn, target, max_attempts)
    if left and not force:
        raise ConflictError(
            f"the {target.entity} target lacks {left} rows ({parked} parked). Fix: wait for "
            f"the fill (`{CMD} status`), or `{CMD} cutover --force`: search then returns only "
            "rows embedded by the new model and says how many it could not consider"
        )


async def _restate(conn: AsyncConnection, old: str, new: str, *, retire: bool) -> None:
    suffix = SLOT_SUFFIX.get(new, "")
    await conn.execute(
        text(
            "UPDATE embedding_spaces SET state = :new, phase = NULL, "
            "column_name = 'embedding' || :suffix, "
            "index_name = entity || '_embedding' || :suffix || '_hnsw_idx', "
            "activated_at = CASE WHEN :new = 'active' THEN now() ELSE activated_at END, "
            "retired_at = CASE WHEN :retire THEN now() ELSE retired_at END "
            "WHERE state = :old"
        ),
        {"old": old, "new": new, "suffix": suffix, "retire": retire},
    )


async def _make_default(conn: AsyncConnection, space: Space) -> None:
    """The providers table says what is active: the space's provider is the default."""
    await conn.execute(text(provider_service.DEFAULT_LOCK))
    await conn.execute(
        text(
            "UPDATE llm_providers SET is_default = (id IS NOT DISTINCT FROM CAST(:pid AS uuid)) "
            "WHERE is_default OR id IS NOT DISTINCT FROM CAST(:pid AS uuid)"
        ),
        {"pid": space.provider_id},
    )


async def rollback(engine: AsyncEngine) -> str:
    """After a cutover: the previous space active again, the new one dropped. Before: the
    switch abandoned (its columns dropped). Returns what was done."""

    async def work(conn: AsyncConnection) -> str:
        await conn.execute(text("SELECT id FROM embedding_spaces FOR UPDATE"))
        spaces = await load_spaces(conn)
        previous = [s for s in spaces if s.state == "previous"]
        targets = [s for s in spaces if s.state == "target"]
        if previous:
            for space in previous:
                table = ENTITIES[space.entity].table
                await conn.execute(text(_drop_sql(table, "")))
                for statement in _rename_sql(table, "_prev", ""):
                    await conn.execute(text(statement))
            await _restate(conn, "active", "retired", retire=True)
            await _restate(conn, "previous", "active", retire=False)
            await _make_default(conn, previous[0])
            return f"rolled back: {previous[0].describe()} is active again"
        if targets:
            for space in targets:
                await conn.execute(text(_drop_sql(ENTITIES[space.entity].table, "_next")))
                await _restore_fillfactor(conn, ENTITIES[space.entity].table)
            await _restate(conn, "target", "retired", retire=True)
            return f"switch to {targets[0].describe()} abandoned; its columns dropped"
        raise ConflictError("nothing to roll back: no switch under way and no previous space")

    return await _ddl(engine, work)  # type: ignore[return-value]


async def finish(engine: AsyncEngine) -> str:
    """Drop the previous space's columns and indexes: the switch is over."""

    async def work(conn: AsyncConnection) -> str:
        await conn.execute(text("SELECT id FROM embedding_spaces FOR UPDATE"))
        spaces = await load_spaces(conn)
        previous = [s for s in spaces if s.state == "previous"]
        if not previous:
            if any(s.state == "target" for s in spaces):
                raise ConflictError(
                    f"the switch is not cut over yet. Fix: `{CMD} cutover`, or `{CMD} rollback`"
                )
            raise ConflictError("nothing to finish: no previous space is kept")
        for space in previous:
            await conn.execute(text(_drop_sql(ENTITIES[space.entity].table, "_prev")))
        await _restate(conn, "previous", "retired", retire=True)
        return f"finished: {previous[0].describe()} dropped"

    return await _ddl(engine, work)  # type: ignore[return-value]
