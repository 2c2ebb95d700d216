"""Embedding tasks: thin wrappers over app.services.embedding_jobs."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from taskiq import AsyncBroker
from taskiq.kicker import AsyncKicker

from app.services.embedding_jobs import embed_rows
from app.services.embedding_queue import Enqueue
from app.services.entities import ATOMS, MESSAGES, Entity
from app.tasks import runtime as runtime_module
from app.tasks.broker import broker

logger = logging.getLogger(__name__)


async def _embed_batch(entity: Entity, ids: list[str], provider_id: str | None) -> dict[str, int]:
    runtime = runtime_module.runtime
    entry = await runtime.embedding(provider_id)
    stats = await embed_rows(
        runtime.engine,
        entity,
        [uuid.UUID(i) for i in ids],
        entry.service,
        model=entry.spec.model,
        max_attempts=runtime.settings.embedding_max_attempts,
    )
    logger.info("embedded %s: %s", entity.name, stats.as_dict())
    return stats.as_dict()


@broker.task(task_name="embeddings.embed_messages_batch", retry_on_error=True)
async def embed_messages_batch_task(
    message_ids: list[str], provider_id: str | None = None
) -> dict[str, int]:
    """Embed the messages among these ids that need it: {embedded, skipped, failed}."""
    return await _embed_batch(MESSAGES, message_ids, provider_id)


@broker.task(task_name="embeddings.embed_atoms_batch", retry_on_error=True)
async def embed_atoms_batch_task(
    atom_ids: list[str], provider_id: str | None = None
) -> dict[str, int]:
    """Embed the atoms among these ids that need it: {embedded, skipped, failed}."""
    return await _embed_batch(ATOMS, atom_ids, provider_id)


def enqueuer(provider_id: str | None = None, target: AsyncBroker | None = None) -> Enqueue:
    """An Enqueue for app.services.embedding_queue that publishes the batch tasks (to `target`)."""
    via = target or broker

    async def enqueue(entity: Entity, ids: list[uuid.UUID]) -> None:
        task = embed_messages_batch_task if entity.name == "messages" else embed_atoms_batch_task
        # The task's own labels travel with the message (retry_on_error among them).
        kicker: AsyncKicker[Any, Any] = AsyncKicker(
            task_name=task.task_name, broker=via, labels=dict(task.labels)
        )
        await kicker.kiq([str(i) for i in ids], provider_id)

    return enqueue
