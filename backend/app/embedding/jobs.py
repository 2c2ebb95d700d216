"""Embed rows by id: claim them with a lease, embed their current text, write behind the hash.

Three short steps, no transaction across the provider call, so a slow provider never blocks an
edit: (1) one statement claims the rows that need it (embedding_claimed_by, a lease that is
renewed while the provider works); (2) the provider is called with no transaction open; (3) one
short transaction writes every vector whose row still has the embedded text and the lease,
records row errors (after `max_attempts` a row is parked) and releases the rest. Rows edited
while they were embedded are claimed and embedded again at once. Two workers given the same ids
embed each row once; a lease that expires (worker killed) makes the rows claimable again.

A database that goes away (restart, failover) is waited out: each step is retried with backoff
until the database answers or `db_retry_seconds` pass; vectors already made are not asked for
again; a process that is stopping gives up at once (`DbRetry.stop`). A provider outage raises,
nothing is written and the leases are released (the rows stay on the queue: the caller retries,
or hands them back with `embedding_queue.mark_queued`).

A task may fill its batch (`fill_to`) with other rows that wait: after an outage the backlog
drains a full batch per provider call instead of one row per queued task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import numpy as np
from pgvector import Vector
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import is_transient_db_error
from app.embedding.embedding_service import EmbeddingService, EmbedOutcome
from app.embedding.entities import Entity
from app.models.embedding_space import SLOT_SUFFIX

logger = logging.getLogger(__name__)
T = TypeVar("T")
# The lease owners of the embed_rows calls running in this process.
_RUNNING: set[str] = set()
# Rounds of claim-embed-write for rows edited while they were being embedded.
MAX_ROUNDS = 3
Heartbeat = Callable[[], Awaitable[None]]


@dataclass
class EmbedStats:
    embedded: int = 0
    skipped: int = 0
    failed: int = 0
    # Skipped because a live lease that no running call of this process holds is on them
    # (another worker's, or one a failed call could not release): not done (`_busy_sql`).
    busy: list[uuid.UUID] = field(default_factory=list)
    # Seconds until the last of the busy rows' leases runs out (if it is not renewed).
    busy_seconds: float = 0.0
    # Rows beyond the task's own ids taken into its batch (counted in embedded/failed too).
    filled: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"embedded": self.embedded, "skipped": self.skipped, "failed": self.failed}


@dataclass(frozen=True)
class Lease:
    """Who holds the claim (one owner per embed_rows call: never shared by two at once) and
    for how long it lasts."""

    seconds: float = 30.0
    renew_every: float | None = None  # default: a third of the lease
    owner: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    )


@dataclass(frozen=True)
class DbRetry:
    """Retry a step while the database is unreachable, with capped exponential backoff."""

    seconds: float = 300.0
    base_delay: float = 0.25
    max_delay: float = 2.0
    # Set when the process is stopping: the wait ends, the last error is raised.
    stop: asyncio.Event | None = None
    # Told when the database fails and when it answers again after failing.
    failed: Callable[[], None] | None = None
    recovered: Callable[[], None] | None = None

    async def run(self, step: Callable[[], Awaitable[T]]) -> T:
        deadline = time.monotonic() + self.seconds
        attempt = 0
        while True:
            try:
                result = await step()
            except Exception as exc:
                if not is_transient_db_error(exc):
                    raise
                if self.failed is not None:
                    self.failed()
                if time.monotonic() >= deadline:
                    raise
                if self.stop is not None and self.stop.is_set():
                    raise
                attempt += 1
                delay = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
                delay *= 0.5 + random.random() / 2
                if attempt == 1 or attempt % 10 == 0:
                    logger.warning(
                        "database unreachable (%s: %s); retry %d in %.2fs",
                        type(exc).__name__,
                        exc,
                        attempt,
                        delay,
                    )
                await self._sleep(delay)
                continue
            if attempt and self.recovered is not None:
                self.recovered()
            return result

    async def _sleep(self, delay: float) -> None:
        if self.stop is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), delay)


async def driver_connection(conn: Any) -> Any:
    """The asyncpg connection under a SQLAlchemy AsyncConnection."""
    raw = await conn.get_raw_connection()
    return raw.driver_connection


def _claimable(entity: Entity) -> str:
    c = entity.cols
    return f"""
        SELECT id FROM {entity.table}
        WHERE id = ANY($1::uuid[])
          AND ({c.needs_text} OR {c.model} IS DISTINCT FROM $2)
          AND {c.attempts} < $3
          AND ({c.claimed_by} IS NULL OR {c.claimed_by} = $4
               OR {c.claim_expires_at} < now())
        ORDER BY id
        FOR UPDATE SKIP LOCKED
    """


def _claim_sql(entity: Entity) -> str:
    # One statement: its row locks end with it; the lease is what other workers respect.
    c = entity.cols
    return f"""
        UPDATE {entity.table} AS t
        SET {c.claimed_by} = $4, {c.claim_expires_at} = now() + make_interval(secs => $5)
        FROM ({_claimable(entity)}) AS c
        WHERE t.id = c.id
        RETURNING t.id, {entity.text_sql} AS text, t.content_hash
    """


def _fill_sql(entity: Entity) -> str:
    # Any other row waiting for its text to be embedded in this slot (the partial pending index
    # finds them): a backlog left by an outage drains a full batch per provider call, not a row
    # per task.
    c = entity.cols
    return f"""
        UPDATE {entity.table} AS t
        SET {c.claimed_by} = $1, {c.claim_expires_at} = now() + make_interval(secs => $2)
        FROM (
            SELECT id FROM {entity.table}
            WHERE {c.needs_text} AND {c.attempts} < $3
              AND ({c.claimed_by} IS NULL OR {c.claim_expires_at} < now())
            ORDER BY id
            LIMIT $4
            FOR UPDATE SKIP LOCKED
        ) AS c
        WHERE t.id = c.id
        RETURNING t.id, {entity.text_sql} AS text, t.content_hash
    """


def _busy_sql(entity: Entity) -> str:
    # Held by a live lease that no running call of this process holds: another process's (it
    # renews it while it works), or a call of this one that ended without giving its rows
    # back (the database was down): it runs out. A running call finishes its rows or hands
    # them back (embed_rows).
    c = entity.cols
    return f"""
        SELECT id, extract(epoch FROM {c.claim_expires_at} - now()) AS seconds_left
        FROM {entity.table}
        WHERE id = ANY($1::uuid[]) AND NOT ({c.claimed_by} = ANY($2::text[]))
          AND {c.claim_expires_at} >= now()
          AND {c.needs_text}
        ORDER BY id
    """


def _renew_sql(entity: Entity) -> str:
    c = entity.cols
    return f"""
        UPDATE {entity.table}
        SET {c.claim_expires_at} = now() + make_interval(secs => $3)
        WHERE id = ANY($1::uuid[]) AND {c.claimed_by} = $2
    """


def _write_sql(entity: Entity) -> str:
    c = entity.cols
    return f"""
        UPDATE {entity.table} AS t
        SET {c.vector} = v.embedding, {c.model} = $4, {c.embedded_at} = now(),
            {c.hash} = v.hash, {c.error} = NULL, {c.attempts} = 0,
            {c.claimed_by} = NULL, {c.claim_expires_at} = NULL
        FROM unnest($1::uuid[], $2::vector[], $3::text[]) AS v(id, embedding, hash)
        WHERE t.id = v.id AND t.content_hash = v.hash AND t.{c.claimed_by} = $5
    """


def _fail_sql(entity: Entity) -> str:
    c = entity.cols
    return f"""
        UPDATE {entity.table} AS t
        SET {c.error} = v.error, {c.attempts} = t.{c.attempts} + 1,
            {c.claimed_by} = NULL, {c.claim_expires_at} = NULL
        FROM unnest($1::uuid[], $2::text[], $3::text[]) AS v(id, error, hash)
        WHERE t.id = v.id AND t.content_hash = v.hash AND t.{c.claimed_by} = $4
    """


def _release_sql(entity: Entity, *, requeue: bool) -> str:
    # Rows released with `requeue` are off the queue: the sweeper takes them on its next pass.
    c = entity.cols
    queued = f", {c.queued_at} = NULL" if requeue else ""
    return f"""
        UPDATE {entity.table}
        SET {c.claimed_by} = NULL, {c.claim_expires_at} = NULL{queued}
        WHERE id = ANY($1::uuid[]) AND {c.claimed_by} = $2
        RETURNING id
    """


# Held for the statement's transaction: a cutover (which takes the row FOR UPDATE before it
# renames columns) waits for it, so a statement never names the columns of a slot that moved.
_SLOT_SQL = "SELECT state FROM embedding_spaces WHERE id = $1 FOR SHARE"


async def _slotted(apg: Any, entity: Entity) -> Entity | None:
    """The columns the entity's space holds now (None: the space was retired); in a transaction."""
    if entity.space_id is None:
        return entity
    state = await apg.fetchval(_SLOT_SQL, entity.space_id)
    if state is None or state not in SLOT_SUFFIX:
        return None
    return entity.slot(SLOT_SUFFIX[state], entity.space_id)


@contextlib.asynccontextmanager
async def _in_slot(engine: AsyncEngine, entity: Entity) -> AsyncIterator[tuple[Any, Entity | None]]:
    """A transaction on the asyncpg connection, with the columns the entity's space holds now
    (None: the space was retired); the space row stays held until the block ends."""
    async with engine.connect() as conn:
        apg = await driver_connection(conn)
        async with apg.transaction():
            yield apg, await _slotted(apg, entity)


async def _fetch_in_slot(
    engine: AsyncEngine, entity: Entity, sql_of: Callable[[Entity], str], *args: Any
) -> list[Any]:
    """The rows of `sql_of(slot)` run in the entity's current slot (none if it was retired)."""
    async with _in_slot(engine, entity) as (apg, slot):
        return [] if slot is None else list(await apg.fetch(sql_of(slot), *args))


def _affected(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


async def _claim(
    engine: AsyncEngine,
    entity: Entity,
    ids: Sequence[uuid.UUID],
    model: str,
    max_attempts: int,
    lease: Lease,
) -> list[Any]:
    rows = await _fetch_in_slot(
        engine, entity, _claim_sql, list(ids), model, max_attempts, lease.owner, lease.seconds
    )
    return sorted(rows, key=lambda row: row["id"])


async def _fill(
    engine: AsyncEngine, entity: Entity, count: int, max_attempts: int, lease: Lease
) -> list[Any]:
    """Claim up to `count` more rows that wait for an embedding (any ids)."""
    return await _fetch_in_slot(
        engine, entity, _fill_sql, lease.owner, lease.seconds, max_attempts, count
    )


async def _busy(engine: AsyncEngine, entity: Entity, ids: Sequence[uuid.UUID]) -> list[Any]:
    return await _fetch_in_slot(engine, entity, _busy_sql, list(ids), sorted(_RUNNING))


async def release(
    engine: AsyncEngine,
    entity: Entity,
    ids: Sequence[uuid.UUID],
    owner: str,
    *,
    requeue: bool = False,
) -> list[uuid.UUID]:
    """Give up the lease `owner` holds on these rows; returns the ids released."""
    sql_of = partial(_release_sql, requeue=requeue)
    released = await _fetch_in_slot(engine, entity, sql_of, list(ids), owner)
    return [row["id"] for row in released]


@contextlib.asynccontextmanager
async def _renewing(
    engine: AsyncEngine,
    entity: Entity,
    ids: list[uuid.UUID],
    lease: Lease,
    heartbeat: Heartbeat | None,
) -> AsyncIterator[None]:
    """While the block runs, renew the lease (and call `heartbeat`) every `renew_every`."""

    async def renew() -> None:
        while True:
            await asyncio.sleep(lease.renew_every or lease.seconds / 3)
            try:
                if heartbeat is not None:
                    await heartbeat()
                async with _in_slot(engine, entity) as (apg, slot):
                    if slot is not None:
                        await apg.execute(_renew_sql(slot), ids, lease.owner, lease.seconds)
            except Exception as exc:  # noqa: BLE001 - the next renewal tries again
                logger.warning("could not renew a lease (%s: %s)", type(exc).__name__, exc)

    task = asyncio.create_task(renew())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@dataclass
class _Written:
    embedded: int
    failed: int
    edited: list[uuid.UUID]  # claimed, not written: their text changed meanwhile


async def _write(
    engine: AsyncEngine,
    entity: Entity,
    rows: list[Any],
    outcomes: list[EmbedOutcome],
    model: str,
    lease: Lease,
) -> _Written:
    pairs = list(zip(rows, outcomes, strict=True))
    good = [(row, out.vector) for row, out in pairs if out.vector is not None]
    bad = [(row, out.error or "unknown error") for row, out in pairs if out.vector is None]
    embedded = failed = 0
    async with _in_slot(engine, entity) as (apg, slot):
        if slot is None:  # the space was retired meanwhile (a rollback or finish)
            return _Written(0, 0, [])
        entity = slot
        if good:
            status = await apg.execute(
                _write_sql(entity),
                [row["id"] for row, _ in good],
                # Vector objects: a bare list of arrays would be taken for a 2-D array.
                [Vector(np.asarray(vector, dtype=np.float32)) for _, vector in good],
                [row["content_hash"] for row, _ in good],
                model,
                lease.owner,
            )
            embedded = _affected(status)
        if bad:
            status = await apg.execute(
                _fail_sql(entity),
                [row["id"] for row, _ in bad],
                [error[:1000] for _, error in bad],
                [row["content_hash"] for row, _ in bad],
                lease.owner,
            )
            failed = _affected(status)
        left = await apg.fetch(
            _release_sql(entity, requeue=True), [row["id"] for row in rows], lease.owner
        )
    return _Written(embedded, failed, sorted(row["id"] for row in left))


async def embed_rows(
    engine: AsyncEngine,
    entity: Entity,
    ids: Sequence[uuid.UUID],
    service: EmbeddingService,
    *,
    model: str,
    max_attempts: int,
    lease: Lease | None = None,
    retry: DbRetry | None = None,
    heartbeat: Heartbeat | None = None,
    fill_to: int = 0,
    requeued: Callable[[], None] | None = None,
) -> EmbedStats:
    """Embed the rows among `ids` that need it; return embedded/skipped/failed counts.

    With `fill_to`, the first claim is topped up to that many rows with any others that wait
    for their text to be embedded (their own tasks then find nothing to do). A call that
    fails gives back what it holds, and calls `requeued` when it handed filled-in rows back to
    the sweeper.
    """
    lease = lease or Lease()
    retry = retry or DbRetry()
    stats = EmbedStats()
    todo, first = list(ids), True
    held: dict[uuid.UUID, bool] = {}  # the rows this call holds -> whether it filled them in
    _RUNNING.add(lease.owner)
    try:
        for _ in range(MAX_ROUNDS):
            rows = await retry.run(
                partial(_claim, engine, entity, todo, model, max_attempts, lease)
            )
            held.update((row["id"], held.get(row["id"], False)) for row in rows)
            stats.skipped += len(todo) - len(rows)
            filled: list[Any] = []
            if first:
                if len(rows) < len(todo):
                    busy = await retry.run(partial(_busy, engine, entity, todo))
                    stats.busy = [row["id"] for row in busy]
                    stats.busy_seconds = max((float(r["seconds_left"]) for r in busy), default=0)
                if fill_to > len(rows):
                    more = fill_to - len(rows)
                    filled = await retry.run(
                        partial(_fill, engine, entity, more, max_attempts, lease)
                    )
                    held.update((row["id"], True) for row in filled)
                    stats.filled = len(filled)
            first = False
            rows = sorted([*rows, *filled], key=lambda row: row["id"])
            if not rows:
                return stats
            outcomes = await _embed_claimed(engine, entity, rows, service, lease, heartbeat)
            written = await retry.run(partial(_write, engine, entity, rows, outcomes, model, lease))
            held = {i: held[i] for i in written.edited if i in held}  # the rest are released
            stats.embedded += written.embedded
            stats.failed += written.failed
            todo = written.edited
    except BaseException as exc:
        # Waits for the database only when the call failed for another reason: past its own
        # retries, or cancelled, one try.
        waits = isinstance(exc, Exception) and not is_transient_db_error(exc)
        if await _give_back(engine, entity, held, lease, retry if waits else None) and requeued:
            requeued()
        raise
    finally:
        _RUNNING.discard(lease.owner)
    stats.skipped += len(todo)
    return stats


async def _give_back(
    engine: AsyncEngine,
    entity: Entity,
    held: dict[uuid.UUID, bool],
    lease: Lease,
    retry: DbRetry | None,
) -> int:
    """A call that failed releases what it holds, at any step: its own rows for its task's
    next delivery, the rows it filled in back to the sweeper (their own tasks took them as
    this call's and are done); returns how many went back to the sweeper. With `retry` a
    database that went away is waited for, once for both (not past a stop); without (the call
    was cancelled, or the database stayed away past its retries) one try. A lease not
    released runs out: the task of one of its own rows comes back then (`_busy`); a filled-in
    row waits for the sweeper's next pass."""
    own = sorted(i for i, filled_in in held.items() if not filled_in)
    others = sorted(i for i, filled_in in held.items() if filled_in)

    async def both() -> int:
        # Again after a failure of the second, the first releases nothing: its owner is gone.
        if own:
            await release(engine, entity, own, lease.owner)
        return (
            len(await release(engine, entity, others, lease.owner, requeue=True)) if others else 0
        )

    try:
        return await (both() if retry is None else retry.run(both))
    except Exception as exc:  # noqa: BLE001 - the call's own error is the one raised
        logger.warning(
            "could not release %d %s (%s); their leases run out", len(held), entity.name, exc
        )
        return 0


async def _embed_claimed(
    engine: AsyncEngine,
    entity: Entity,
    rows: list[Any],
    service: EmbeddingService,
    lease: Lease,
    heartbeat: Heartbeat | None,
) -> list[EmbedOutcome]:
    """The provider call under a renewed lease (on failure embed_rows gives the rows back)."""
    claimed = [row["id"] for row in rows]
    async with _renewing(engine, entity, claimed, lease, heartbeat):
        return await service.embed_documents([row["text"] for row in rows])
