"""Run an extractor over stored messages and save topics, atoms and their links, idempotently."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.core.enums import ExtractionStatus
from app.knowledge.base import Extractor
from app.knowledge.schemas import ExtractedAtom, ExtractionResult, SourceMessage
from app.models.atom import Atom, AtomMessage
from app.models.message import Message
from app.models.topic import Topic, TopicAtom

logger = logging.getLogger(__name__)


@dataclass
class ExtractionSummary:
    extractor: str
    message_ids: list[uuid.UUID] = field(default_factory=list)
    atom_ids: list[uuid.UUID] = field(default_factory=list)
    new_atom_ids: list[uuid.UUID] = field(default_factory=list)
    topics: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "extractor": self.extractor,
            "messages": len(self.message_ids),
            "atoms": len(self.atom_ids),
            "new_atoms": len(self.new_atom_ids),
            "topics": self.topics,
        }


def atom_fingerprint(atom: ExtractedAtom, source_ids: Sequence[str]) -> str:
    """The same atom from the same messages is the same row, however often it is extracted."""
    key = "\x1f".join([atom.type.value, " ".join(atom.title.lower().split()), *sorted(source_ids)])
    return hashlib.sha256(key.encode()).hexdigest()


async def load_messages(session: AsyncSession, ids: Sequence[uuid.UUID]) -> list[Message]:
    """The messages among `ids`, oldest first."""
    rows = await session.execute(
        select(Message)
        .where(col(Message.id).in_(list(ids)))
        .order_by(col(Message.sent_at), col(Message.id))
    )
    return list(rows.scalars())


# Claims the messages a call queues: 'processing' until the task marks them done or failed, so
# a repeated all_pending call does not queue them again. A claim older than `stale` seconds
# (its task lost or crashed) counts as pending again: nothing stays stuck.
CLAIM_PENDING = """
WITH picked AS (
    SELECT id FROM messages
    WHERE extraction_status = 'pending'
       OR (extraction_status = 'processing'
           AND updated_at < now() - make_interval(secs => :stale))
    ORDER BY sent_at, id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE messages m SET extraction_status = 'processing', updated_at = now()
    FROM picked WHERE m.id = picked.id
    RETURNING m.id, m.sent_at
)
SELECT id FROM claimed ORDER BY sent_at, id
"""


async def claim_pending(
    session: AsyncSession, *, limit: int, stale_seconds: float
) -> list[uuid.UUID]:
    """Mark pending messages (and stale claims) 'processing' and return them, oldest first."""
    rows = await session.execute(
        text(CLAIM_PENDING), {"limit": limit, "stale": float(stale_seconds)}
    )
    # Ordered by the server: Python cannot order a naive datetime.max (asyncpg's 'infinity')
    # against aware ones.
    return [row.id for row in rows]


async def claim(session: AsyncSession, ids: Sequence[uuid.UUID]) -> None:
    """Mark the given messages 'processing' (an explicit request re-extracts any status)."""
    await session.execute(
        text(
            "UPDATE messages SET extraction_status = 'processing', updated_at = now() "
            "WHERE id = ANY(:ids)"
        ),
        {"ids": list(ids)},
    )


async def release(session: AsyncSession, ids: Sequence[uuid.UUID]) -> None:
    """Give back claims whose task could not be queued: pending again."""
    await session.execute(
        text(
            "UPDATE messages SET extraction_status = 'pending' "
            "WHERE id = ANY(:ids) AND extraction_status = 'processing'"
        ),
        {"ids": list(ids)},
    )


async def mark_failed(session: AsyncSession, ids: Sequence[uuid.UUID], error: str) -> None:
    """Record an extraction failure on the messages."""
    await session.execute(
        text(
            "UPDATE messages SET extraction_status = 'failed', extraction_error = :error "
            "WHERE id = ANY(:ids)"
        ),
        {"ids": list(ids), "error": error[:2000]},
    )


async def extract_and_save(
    session: AsyncSession, message_ids: Sequence[uuid.UUID], extractor: Extractor
) -> ExtractionSummary:
    """Extract knowledge from the messages and save it; flushes, the caller commits."""
    summary = ExtractionSummary(extractor=extractor.name)
    messages = await load_messages(session, message_ids)
    if not messages:
        return summary
    sources = [
        SourceMessage(
            id=str(m.id), author=m.author, channel=m.channel, content=m.content, sent_at=m.sent_at
        )
        for m in messages
    ]
    result = await extractor.extract(sources)  # raises before anything is written
    topic_ids = await _save_topics(session, result)
    for atom in result.atoms:
        atom_id, is_new = await _save_atom(session, atom, topic_ids[atom.topic])
        summary.atom_ids.append(atom_id)
        if is_new:
            summary.new_atom_ids.append(atom_id)
    await session.execute(
        text(
            "UPDATE messages SET extraction_status = :done, extracted_at = now(), "
            "extraction_error = NULL WHERE id = ANY(:ids)"
        ),
        {"ids": [m.id for m in messages], "done": ExtractionStatus.done.value},
    )
    summary.message_ids = [m.id for m in messages]
    summary.topics = len(topic_ids)
    return summary


async def _save_topics(session: AsyncSession, result: ExtractionResult) -> dict[str, uuid.UUID]:
    ids = {}
    for topic in result.topics:
        statement = (
            insert(Topic)
            .values(id=uuid.uuid4(), name=topic.name, description=topic.description)
            .on_conflict_do_update(index_elements=["name"], set_={"name": topic.name})
            .returning(col(Topic.id))
        )
        ids[topic.name] = (await session.execute(statement)).scalar_one()
    return ids


async def _save_atom(
    session: AsyncSession, atom: ExtractedAtom, topic_id: uuid.UUID
) -> tuple[uuid.UUID, bool]:
    fingerprint = atom_fingerprint(atom, atom.source_message_ids)
    inserted = (
        await session.execute(
            insert(Atom)
            .values(
                id=uuid.uuid4(),
                type=atom.type.value,
                title=atom.title,
                content=atom.content,
                confidence=atom.confidence,
                fingerprint=fingerprint,
            )
            .on_conflict_do_nothing(index_elements=["fingerprint"])
            .returning(col(Atom.id))
        )
    ).scalar_one_or_none()
    atom_id = (
        inserted
        or (
            await session.execute(select(col(Atom.id)).where(col(Atom.fingerprint) == fingerprint))
        ).scalar_one()
    )
    links = [{"atom_id": atom_id, "message_id": uuid.UUID(m)} for m in atom.source_message_ids]
    await session.execute(insert(AtomMessage).values(links).on_conflict_do_nothing())
    await session.execute(
        insert(TopicAtom).values(topic_id=topic_id, atom_id=atom_id).on_conflict_do_nothing()
    )
    return atom_id, inserted is not None
