"""Knowledge extraction task, with the hook that queues embeddings for what it produced."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncEngine
from taskiq import AsyncBroker

from app.broker import broker
from app.db import session_factory
from app.embedding import runtime as runtime_module
from app.embedding.entities import ATOMS, MESSAGES
from app.embedding.queue import needing_embedding, publish
from app.embedding.tasks import enqueuer
from app.knowledge import build_extractor
from app.knowledge.base import ExtractionError
from app.knowledge.extraction_service import extract_and_save, mark_failed

logger = logging.getLogger(__name__)


async def queue_embeddings(
    engine: AsyncEngine,
    *,
    atom_ids: Sequence[uuid.UUID],
    message_ids: Sequence[uuid.UUID],
    provider_id: str | None,
    batch_size: int,
    target: AsyncBroker | None = None,
) -> dict[str, int]:
    """The hook: publish embedding tasks for the rows that need them; never raises on publish."""
    enqueue = enqueuer(provider_id, target)
    queued: dict[str, int] = {}
    for entity, ids in ((ATOMS, atom_ids), (MESSAGES, message_ids)):
        todo = await needing_embedding(engine, entity, ids)
        published, _failed = await publish(engine, enqueue, entity, todo, batch_size=batch_size)
        queued[entity.name] = published
    return queued


@broker.task(task_name="knowledge.extract_from_messages")
async def extract_knowledge_from_messages_task(
    message_ids: list[str], provider_id: str | None = None
) -> dict[str, object]:
    """Extract topics and atoms from messages, save them, then queue their embeddings."""
    runtime = runtime_module.runtime
    ids = [uuid.UUID(i) for i in message_ids]
    extractor = build_extractor(runtime.settings)
    try:
        async with session_factory(runtime.engine)() as session:
            try:
                summary = await extract_and_save(session, ids, extractor)
                await session.commit()
            except ExtractionError as exc:
                await session.rollback()
                await mark_failed(session, ids, exc.message)
                await session.commit()
                raise
    finally:
        aclose = getattr(extractor, "aclose", None)
        if aclose is not None:
            await aclose()
    # After the commit: the rows are visible to the worker that will embed them.
    queued = await queue_embeddings(
        runtime.engine,
        atom_ids=summary.atom_ids,
        message_ids=summary.message_ids,
        provider_id=provider_id,
        batch_size=runtime.settings.task_batch_size,
    )
    result = {**summary.as_dict(), "queued": queued}
    logger.info("extraction done: %s", result)
    return result
