"""Embedding tasks: thin wrappers over app.embedding.jobs, and what a failure means.

- A provider error: retried with backoff by the broker's retry middleware; when the retries
  are spent the rows are handed back to the sweeper (it takes them on its next pass).
- The database unreachable: waited out inside the task (embedding_jobs.DbRetry); past that,
  the message is delivered again later, and on its last delivery the rows are handed back.
- A failure no retry can fix (AppError: the provider does not fit the column, its key cannot
  be decrypted, it does not exist): the rows are parked with the reason at once.
- Anything else (a poison message): delivered again with a backoff, at most max_deliver times;
  on the last delivery its rows are parked with the reason.

A task of the default provider fills its batch with other waiting rows (embed_rows' fill_to),
and tells the worker's Recovery when the database or the provider fails and comes back, which
wakes the sweeper for the rows that waited with no task.
"""

from __future__ import annotations

import logging
import uuid
from functools import partial
from typing import Annotated

from taskiq import AsyncBroker, Context, TaskiqDepends
from taskiq.message import TaskiqMessage

from app.broker import Delivery, ProviderRetryMiddleware, broker, current_delivery, kicker
from app.core.config import Settings
from app.core.errors import AppError, EmbeddingProviderError
from app.db import is_transient_db_error
from app.embedding import runtime as runtime_module
from app.embedding.entities import ATOMS, MESSAGES, Entity
from app.embedding.jobs import DbRetry, Lease, embed_rows
from app.embedding.queue import Enqueue, mark_queued, park, slot_of
from app.embedding.recovery import DATABASE, PROVIDER

logger = logging.getLogger(__name__)
# The running task's context, given by taskiq (None when the function is called directly).
TaskContext = Annotated[Context | None, TaskiqDepends(Context)]
MESSAGES_TASK = "embeddings.embed_messages_batch"
ATOMS_TASK = "embeddings.embed_atoms_batch"
TASK_ENTITIES = {MESSAGES_TASK: MESSAGES, ATOMS_TASK: ATOMS}
REDELIVERY_DELAY = 5.0  # seconds before the first redelivery of a failed message; doubles


def _db_retry(runtime: runtime_module.TaskRuntime) -> DbRetry:
    """Wait the database out (not past a stop), telling the sweeper when it is back."""
    recovery = runtime.recovery
    return DbRetry(
        seconds=runtime.settings.db_retry_seconds,
        stop=runtime.stopping,
        failed=partial(recovery.failed, DATABASE),
        recovered=partial(recovery.back, DATABASE),
    )


def _lease(settings: Settings) -> Lease:
    # renewed often enough for JetStream's ack timer too
    every = min(settings.embedding_lease_seconds, settings.nats_ack_wait_seconds) / 3
    return Lease(seconds=settings.embedding_lease_seconds, renew_every=every)


async def _embed_batch(
    entity: Entity,
    ids: list[str],
    provider_id: str | None,
    space_id: int | None,
    context: Context | None,
) -> dict[str, int]:
    runtime = runtime_module.runtime
    settings, recovery = runtime.settings, runtime.recovery
    delivery = current_delivery(context) if context is not None else None
    retry = _db_retry(runtime)
    row_ids = [uuid.UUID(i) for i in ids]
    try:
        resolved = await retry.run(lambda: runtime.for_task(entity, provider_id, space_id))
        if resolved is None:  # its space was retired (rolled back or finished): nothing to do
            return {"embedded": 0, "skipped": len(row_ids), "failed": 0}
        space, entry = resolved
        entity = space.slot
        stats = await embed_rows(
            runtime.engine,
            entity,
            row_ids,
            entry.service,
            model=entry.spec.model,
            max_attempts=settings.embedding_max_attempts,
            lease=_lease(settings),
            retry=retry,
            heartbeat=delivery.in_progress if delivery is not None else None,
            # The active space's tasks of the default provider take other waiting rows into
            # their batch (a switch's fill publishes every row, and its target has no
            # pending-work index to find them by until the fill is done).
            fill_to=settings.task_batch_size
            if provider_id is None and space.state == "active"
            else 0,
            # rows it filled in, handed back after a failure: their own tasks are done
            requeued=recovery.sweep_now,
        )
    except EmbeddingProviderError:
        recovery.failed(PROVIDER)
        raise  # the retry middleware's
    except Exception as exc:  # noqa: BLE001 - sorted below: wait, park or deliver again
        await _failed(entity, row_ids, exc, delivery)
        return {"embedded": 0, "skipped": 0, "failed": len(row_ids)}
    if stats.embedded:
        recovery.back(PROVIDER)
    logger.info("embedded %s: %s (%d filled in)", entity.name, stats.as_dict(), stats.filled)
    if stats.busy and delivery is not None and not delivery.last:
        # Another worker holds them (done soon, or it died and the lease runs out), or a task
        # of this worker that failed and could not give them back: look again when the lease
        # runs out. (A running task of this worker that filled them in finishes them or, if it
        # fails, hands them back.)
        await delivery.nak(_busy_delay(stats.busy_seconds, settings.embedding_lease_seconds))
    return stats.as_dict()


def _busy_delay(seconds_left: float, lease_seconds: float) -> float:
    """Until just after the busy rows' lease runs out, at most half a lease (a live holder
    renews it, and is likely done by then)."""
    return min(lease_seconds / 2, max(1.0, seconds_left + 0.5))


async def _failed(
    entity: Entity, ids: list[uuid.UUID], exc: Exception, delivery: Delivery | None
) -> None:
    """Settle a task that failed for a reason that is not its rows' own."""
    engine = runtime_module.runtime.engine
    max_attempts = runtime_module.runtime.settings.embedding_max_attempts
    reason = f"{type(exc).__name__}: {exc}"
    again = delivery is not None and not delivery.last
    if isinstance(exc, AppError) and not is_transient_db_error(exc):
        parked = await park(engine, entity, ids, exc.message, max_attempts=max_attempts)
        logger.error("parked %d %s: %s", parked, entity.name, exc.message)
    elif again:
        assert delivery is not None
        delay = min(60.0, REDELIVERY_DELAY * 2 ** (delivery.number - 1))
        logger.warning(
            "%s task failed on delivery %d/%d (%s); delivered again in %.0fs",
            entity.name,
            delivery.number,
            delivery.max_deliver,
            reason,
            delay,
        )
        await delivery.nak(delay)
    elif is_transient_db_error(exc):
        logger.error(
            "database still unreachable (%s); %d %s left for the sweeper: %s",
            reason,
            len(ids),
            entity.name,
            ", ".join(map(str, ids)),
        )
    else:
        number = delivery.number if delivery is not None else 1
        reason = f"task failed on {number} deliveries: {reason}"
        parked = await park(engine, entity, ids, reason, max_attempts=max_attempts)
        logger.error("parked %d %s: %s", parked, entity.name, reason)


async def _give_back(message: TaskiqMessage) -> None:
    """Retries spent or not publishable: the sweeper takes the rows on its next pass."""
    engine = runtime_module.runtime.engine
    entity = await slot_of(engine, TASK_ENTITIES[message.task_name], _space_id(message))
    if entity is None:
        return
    ids = [uuid.UUID(i) for i in message.args[0]] if message.args else []
    await mark_queued(engine, entity, ids, queued=False)
    logger.warning("%d %s handed back to the sweeper", len(ids), entity.name)


@broker.task(task_name=MESSAGES_TASK, retry_on_error=True)
async def embed_messages_batch_task(
    message_ids: list[str],
    provider_id: str | None = None,
    space_id: int | None = None,
    context: TaskContext = None,
) -> dict[str, int]:
    """Embed the messages among these ids that need it, for one embedding space (default: the
    active one): {embedded, skipped, failed}."""
    return await _embed_batch(MESSAGES, message_ids, provider_id, space_id, context)


@broker.task(task_name=ATOMS_TASK, retry_on_error=True)
async def embed_atoms_batch_task(
    atom_ids: list[str],
    provider_id: str | None = None,
    space_id: int | None = None,
    context: TaskContext = None,
) -> dict[str, int]:
    """Embed the atoms among these ids that need it, for one embedding space (default: the
    active one): {embedded, skipped, failed}."""
    return await _embed_batch(ATOMS, atom_ids, provider_id, space_id, context)


def _space_id(message: TaskiqMessage) -> int | None:
    space = message.kwargs.get("space_id")
    return int(space) if space is not None else None


ProviderRetryMiddleware.on_give_up.update(dict.fromkeys(TASK_ENTITIES, _give_back))


async def park_exhausted(target: AsyncBroker, data: bytes, deliveries: int) -> None:
    """Park the rows of a message JetStream gave up on (its worker died or hung each time)."""
    message = target.formatter.loads(data)
    base = TASK_ENTITIES.get(message.task_name)
    if base is None or not message.args:
        return
    runtime = runtime_module.runtime
    entity = await slot_of(runtime.engine, base, _space_id(message))
    if entity is None:
        return
    ids = [uuid.UUID(i) for i in message.args[0]]
    reason = f"the task never completed in {deliveries} deliveries (its worker died or hung)"
    max_attempts = runtime.settings.embedding_max_attempts
    parked = await park(runtime.engine, entity, ids, reason, max_attempts=max_attempts)
    logger.error("parked %d %s: %s", parked, entity.name, reason)


def enqueuer(provider_id: str | None = None, target: AsyncBroker | None = None) -> Enqueue:
    """An Enqueue for app.embedding.queue that publishes the batch tasks (to `target`),
    each for the embedding space of the slot it is given."""
    via = target or broker

    async def enqueue(entity: Entity, ids: list[uuid.UUID]) -> None:
        task = embed_messages_batch_task if entity.name == "messages" else embed_atoms_batch_task
        await kicker(task, via).kiq([str(i) for i in ids], provider_id, space_id=entity.space_id)

    return enqueue
