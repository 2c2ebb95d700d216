"""The sweeper, the self-healing path: which rows it publishes, and a lost message healed.

A row is published by the sweeper when it needs an embedding, waited past the grace period, is not
parked, and either was never queued or was queued longer ago than the requeue period (its message
was published but lost: a worker crashed past its redeliveries, a stream was purged).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.broker import build_broker
from app.core.config import Settings
from app.core.urls import to_asyncpg_url
from app.embedding.entities import ATOMS, MESSAGES
from app.embedding.queue import sweep
from app.embedding.tasks import enqueuer
from tests.integration.conftest import Pipeline, insert_messages

# name -> (minutes since the last edit, minutes since it was queued or None, attempts)
ROWS = {
    "young": (0, None, 0),  # inside the grace period
    "waited": (120, None, 0),  # never queued, past the grace period
    "queued_recently": (120, 1, 0),  # its message is presumably on the stream
    "lost": (120, 60, 0),  # queued an hour ago and still not embedded: its message was lost
    "parked": (120, None, 3),  # failed max_attempts times: waits for --retry-failed
}


@pytest.fixture
async def sweeper_db(make_db: Callable[[], str]) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(to_asyncpg_url(make_db()), pool_size=2)
    yield engine
    await engine.dispose()


async def _insert_rows(engine: AsyncEngine) -> dict[str, uuid.UUID]:
    ids = {name: uuid.uuid4() for name in ROWS}
    async with engine.begin() as conn:
        for name, (edited, queued, attempts) in ROWS.items():
            await conn.execute(
                text(
                    "INSERT INTO messages (id, author, channel, content, sent_at, updated_at, "
                    "embedding_queued_at, embedding_attempts) VALUES (:id, 'a', 'c', :name, now(), "
                    "now() - make_interval(mins => :edited), "
                    "now() - make_interval(mins => CAST(:queued AS int)), :attempts)"
                ),
                {
                    "id": ids[name],
                    "name": name,
                    "edited": edited,
                    "queued": queued,
                    "attempts": attempts,
                },
            )
    return ids


async def _queued_at(engine: AsyncEngine) -> dict[str, datetime | None]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT content, embedding_queued_at FROM messages"))
        return {row[0]: row[1] for row in rows}


async def test_the_sweeper_publishes_waited_and_lost_rows_and_leaves_the_rest(
    sweeper_db: AsyncEngine, nats_url: str
) -> None:
    """Grace period, requeue period and parking decide; what it publishes reaches the stream."""
    await _insert_rows(sweeper_db)
    before = await _queued_at(sweeper_db)
    settings = Settings(nats_url=nats_url, nats_stream=f"sweep{uuid.uuid4().hex[:8]}")
    broker = build_broker(settings)
    await broker.startup()
    try:
        counts = await sweep(
            sweeper_db,
            enqueuer(None, broker),
            (MESSAGES, ATOMS),
            grace_seconds=60,
            requeue_after_seconds=600,
            batch_size=100,
            max_attempts=3,
        )
        stream = await broker.js.stream_info(settings.nats_stream)  # type: ignore[attr-defined]
    finally:
        await broker.shutdown()
    assert counts == {"messages": 2, "atoms": 0}
    assert stream.state.messages == 1, "one batch task carrying both ids"
    after = await _queued_at(sweeper_db)
    for name in ("waited", "lost"):
        assert after[name] is not None and (before[name] is None or after[name] > before[name])
    assert after["young"] is None and after["parked"] is None
    assert after["queued_recently"] == before["queued_recently"]


async def test_a_message_lost_after_its_publish_is_requeued_once_the_requeue_period_passed(
    pipeline: Pipeline,
) -> None:
    """Rows marked queued whose message never reached a worker get embedded by the sweeper,
    and not before SWEEPER_REQUEUE_SECONDS have passed since they were marked."""
    requeue = 4
    pipeline.env.update(SWEEPER_GRACE_SECONDS="0", SWEEPER_REQUEUE_SECONDS=str(requeue))
    await insert_messages(pipeline.engine, 30)
    async with pipeline.engine.begin() as conn:
        # What a publish that succeeded leaves behind, with the message itself gone.
        await conn.execute(text("UPDATE messages SET embedding_queued_at = now()"))
        marked = (
            await conn.execute(text("SELECT max(embedding_queued_at) FROM messages"))
        ).scalar_one()
    pipeline.worker()  # with the sweeper, every second
    await pipeline.wait_current("messages", 30, timeout=120)
    async with pipeline.engine.connect() as conn:
        first = (await conn.execute(text("SELECT min(embedded_at) FROM messages"))).scalar_one()
    assert (first - marked).total_seconds() >= requeue, "a recently queued row was left alone"
    assert "sweeper queued {'messages': 30" in pipeline.workers[0].output()
