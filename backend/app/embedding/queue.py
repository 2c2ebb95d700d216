"""The rows are the queue: find what needs embedding, page through it, hand ids to a publisher.

Services know nothing of the broker: callers pass an `Enqueue` (the task layer's publisher).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.embedding.entities import Columns, Entity
from app.embedding.spaces import SpaceBook
from app.models.embedding_space import SLOT_SUFFIX

logger = logging.getLogger(__name__)

Enqueue = Callable[[Entity, list[uuid.UUID]], Awaitable[None]]


@dataclass(frozen=True)
class PendingFilter:
    """Which rows count as work: missing/stale text always; other model and parked rows on request."""

    model: str | None = None  # set: rows embedded by another model count too (--stale)
    include_parked: bool = False
    max_attempts: int = 3

    def where(self, entity: Entity | None = None) -> str:
        """The condition on the slot's columns (default: the active slot)."""
        c = entity.cols if entity is not None else Columns("")
        needs = c.needs_text
        if self.model is not None:
            needs = f"({c.needs_text} OR {c.model} IS DISTINCT FROM :model)"
        if not self.include_parked:
            needs += f" AND {c.attempts} < :max_attempts"
        return needs

    def params(self) -> dict[str, object]:
        return {"model": self.model, "max_attempts": self.max_attempts}


async def count_pending(engine: AsyncEngine, entity: Entity, pending: PendingFilter) -> int:
    """How many rows of `entity` need an embedding."""
    async with engine.connect() as conn:
        sql = f"SELECT count(*) FROM {entity.table} WHERE {pending.where(entity)}"
        return int((await conn.execute(text(sql), pending.params())).scalar_one())


async def pending_pages(
    engine: AsyncEngine,
    entity: Entity,
    pending: PendingFilter,
    *,
    page_size: int,
    limit: int | None = None,
    extra_where: str = "TRUE",
    extra_params: dict[str, object] | None = None,
) -> AsyncIterator[list[uuid.UUID]]:
    """Pages of ids needing embeddings, keyset-paginated by primary key (never OFFSET)."""
    sql = (
        f"SELECT id FROM {entity.table} WHERE id > :after AND {pending.where(entity)} "
        f"AND {extra_where} ORDER BY id LIMIT :page"
    )
    after = uuid.UUID(int=0)
    seen = 0
    while limit is None or seen < limit:
        page = page_size if limit is None else min(page_size, limit - seen)
        params = {**pending.params(), **(extra_params or {}), "after": after, "page": page}
        async with engine.connect() as conn:
            ids = list((await conn.execute(text(sql), params)).scalars())
        if not ids:
            return
        seen += len(ids)
        after = ids[-1]
        yield ids


async def needing_embedding(
    engine: AsyncEngine, entity: Entity, ids: Sequence[uuid.UUID]
) -> list[uuid.UUID]:
    """The ids among `ids` whose rows have no current embedding."""
    async with engine.connect() as conn:
        needs = entity.cols.needs_text
        sql = f"SELECT id FROM {entity.table} WHERE id = ANY(:ids) AND {needs} ORDER BY id"
        return list((await conn.execute(text(sql), {"ids": list(ids)})).scalars())


async def mark_queued(
    engine: AsyncEngine, entity: Entity, ids: Sequence[uuid.UUID], *, queued: bool = True
) -> None:
    """Remember (or forget) that these rows are on the queue, so the sweeper leaves them alone."""
    value = "now()" if queued else "NULL"
    async with engine.begin() as conn:
        slot = await current_slot(conn, entity)
        if slot is None:
            return
        # Rows a worker holds (it is writing them) are skipped, not waited for: the mark only
        # keeps the sweeper away, and waiting on rows another statement locks in another
        # order is how two of them deadlock (a fill's marks against a worker's writes).
        await conn.execute(
            text(
                f"UPDATE {slot.table} AS t SET {slot.cols.queued_at} = {value} "
                f"FROM (SELECT id FROM {slot.table} WHERE id = ANY(:ids) "
                "FOR NO KEY UPDATE SKIP LOCKED) AS s WHERE t.id = s.id"
            ),
            {"ids": list(ids)},
        )


async def current_slot(conn: AsyncConnection, entity: Entity) -> Entity | None:
    """The columns the entity's space holds now, locked for the transaction (a cutover waits):
    a slot cached before a cutover would name columns that moved. None: the space is retired."""
    if entity.space_id is None:
        return entity
    state = (
        await conn.execute(
            text("SELECT state FROM embedding_spaces WHERE id = :id FOR SHARE"),
            {"id": entity.space_id},
        )
    ).scalar()
    if state not in SLOT_SUFFIX:
        return None
    return entity.slot(SLOT_SUFFIX[state], entity.space_id)


async def publish(
    engine: AsyncEngine,
    enqueue: Enqueue,
    entity: Entity,
    ids: Sequence[uuid.UUID],
    *,
    batch_size: int,
) -> tuple[int, list[uuid.UUID]]:
    """Publish ids in batches; return (published count, ids that could not be published).

    An entity without a space is published for every space rows are embedded for now: the
    active one and, while a switch runs, its target (each its own task, marked in its slot).
    A failed publish is logged with its ids and not raised: the rows stay pending and the
    sweeper publishes them later.
    """
    if entity.space_id is None:
        published, failed = 0, list[uuid.UUID]()
        for slot in await writable_slots(engine, entity):
            done, bad = await _publish_slot(engine, enqueue, slot, ids, batch_size=batch_size)
            published, failed = max(published, done), failed + [i for i in bad if i not in failed]
        return published, failed
    return await _publish_slot(engine, enqueue, entity, ids, batch_size=batch_size)


# One book per database: a process may serve several (the tests do), and two databases at the
# same config version would otherwise share one cached list of spaces.
_books: dict[str, SpaceBook] = {}


def _book(engine: AsyncEngine) -> SpaceBook:
    return _books.setdefault(engine.url.render_as_string(hide_password=True), SpaceBook())


def forget_spaces() -> None:
    """Read the spaces again on the next publish (this process just changed them)."""
    for book in _books.values():
        book.version = None


async def writable_slots(engine: AsyncEngine, entity: Entity) -> list[Entity]:
    """The slots of the spaces rows are embedded for (cached; see SpaceBook)."""
    async with engine.connect() as conn:
        spaces = await _book(engine).writable(conn, entity.name)
    return [space.slot for space in spaces] or [entity]


async def slot_of(engine: AsyncEngine, entity: Entity, space_id: int | None) -> Entity | None:
    """The slot of a space named by a task (None: that space is retired)."""
    if space_id is None:
        return entity
    async with engine.connect() as conn:
        space = await _book(engine).by_id(conn, int(space_id))
    return space.slot if space is not None else None


async def _publish_slot(
    engine: AsyncEngine,
    enqueue: Enqueue,
    entity: Entity,
    ids: Sequence[uuid.UUID],
    *,
    batch_size: int,
) -> tuple[int, list[uuid.UUID]]:
    published, failed = 0, list[uuid.UUID]()
    for start in range(0, len(ids), batch_size):
        batch = list(ids[start : start + batch_size])
        if failed:
            # The broker already failed this call (after its own retries): the rest waits for
            # the sweeper at once, rather than each batch waiting out the same retries.
            failed.extend(batch)
            continue
        # Marked before publishing, so the mark never lands after a worker embedded the rows.
        await mark_queued(engine, entity, batch)
        try:
            await enqueue(entity, batch)
        except Exception as exc:  # noqa: BLE001 - any broker failure leaves rows for the sweeper
            logger.warning(
                "could not enqueue %d %s for embedding (%s: %s); the sweeper will pick them up: %s",
                len(ids) - start,
                entity.name,
                type(exc).__name__,
                exc,
                ", ".join(str(i) for i in ids[start:]),
            )
            failed.extend(batch)
            await mark_queued(engine, entity, batch, queued=False)
            continue
        published += len(batch)
    return published, failed


async def sweep(
    engine: AsyncEngine,
    enqueue: Enqueue,
    entities: Sequence[Entity],
    *,
    grace_seconds: float,
    requeue_after_seconds: float,
    batch_size: int,
    max_attempts: int,
    max_rows: int = 100_000,
) -> dict[str, int]:
    """Publish rows that waited longer than the grace period and are not queued recently."""
    # Queued long ago or never, or held by a lease that expired (its worker died), and not
    # held by a live lease.
    params: dict[str, object] = {"grace": grace_seconds, "requeue": requeue_after_seconds}
    counts: dict[str, int] = {}
    for base in entities:
        total = 0
        for entity in await writable_slots(engine, base):
            pages = pending_pages(
                engine,
                entity,
                PendingFilter(max_attempts=max_attempts),
                page_size=batch_size,
                limit=max_rows,
                extra_where=_waited(entity),
                extra_params=params,
            )
            async for ids in pages:
                published, failed = await publish(
                    engine, enqueue, entity, ids, batch_size=batch_size
                )
                total += published
                if failed:  # the broker is failing: the next round (or its wake-up) goes on
                    break
        counts[base.name] = total
    return counts


def _waited(entity: Entity) -> str:
    c = entity.cols
    return (
        f"updated_at < now() - make_interval(secs => :grace) AND ({c.queued_at} IS NULL "
        f"OR {c.queued_at} < now() - make_interval(secs => :requeue) "
        f"OR {c.claim_expires_at} < now()) "
        f"AND ({c.claimed_by} IS NULL OR {c.claim_expires_at} < now())"
    )


async def park(
    engine: AsyncEngine,
    entity: Entity,
    ids: Sequence[uuid.UUID],
    reason: str,
    *,
    max_attempts: int,
) -> int:
    """Park the rows among `ids` still needing an embedding, with the reason; returns how many.

    For failures no retry can fix (a provider that does not fit the column, a key that cannot
    be decrypted, a task that never completes): the sweeper leaves parked rows alone, status
    counts them with their reasons, and `backfill --retry-failed` takes them again.
    """
    async with engine.begin() as conn:
        slot = await current_slot(conn, entity)
        if slot is None:
            return 0
        c = slot.cols
        result = await conn.execute(
            text(
                f"UPDATE {slot.table} SET {c.error} = :reason, "
                f"{c.attempts} = greatest({c.attempts}, :max_attempts), "
                f"{c.claimed_by} = NULL, {c.claim_expires_at} = NULL, "
                f"{c.queued_at} = NULL WHERE id = ANY(:ids) AND {c.needs_text}"
            ),
            {"ids": list(ids), "reason": reason[:1000], "max_attempts": max_attempts},
        )
    return int(result.rowcount)
