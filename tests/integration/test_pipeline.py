"""The embedding pipeline end to end: rows -> JetStream -> a real worker -> stub provider -> rows."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from app.broker import build_broker
from app.embedding.entities import ATOMS, MESSAGES
from app.embedding.queue import PendingFilter, pending_pages, publish
from app.embedding.tasks import enqueuer
from testkit.launchers import NatsProcess
from tests.integration.conftest import Pipeline, insert_atoms, insert_messages

pytestmark = pytest.mark.slow


async def test_every_row_is_embedded_through_the_real_queue(pipeline: Pipeline) -> None:
    await insert_messages(pipeline.engine, 1000)
    await insert_atoms(pipeline.engine, 500)
    pipeline.worker("--no-sweeper")

    await pipeline.enqueue_all(MESSAGES, ATOMS)

    await pipeline.wait_current("messages", 1000)
    await pipeline.wait_current("atoms", 500)
    async with pipeline.engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT content, embedding_content_hash, embedding_model FROM messages")
            )
        ).all()
    assert all(h == hashlib.sha256(c.encode()).hexdigest() for c, h, _ in rows)
    assert {m for _, _, m in rows} == {"text-embedding-3-small"}


async def test_worker_killed_mid_batch_is_redelivered_and_edits_win(pipeline: Pipeline) -> None:
    await insert_messages(pipeline.engine, 1000)
    pipeline.stub.set_latency(ms=300)  # slow enough to kill the worker while batches are in flight
    worker = pipeline.worker("--no-sweeper")
    await pipeline.enqueue_all(MESSAGES)
    deadline = time.monotonic() + 60
    while pipeline.stub.stats()["requests"] < 2:
        assert time.monotonic() < deadline, "the worker sent no batch within 60 s"
        await asyncio.sleep(0.05)
    worker.kill()
    # Edit some rows while nothing runs: their old text must never get a vector.
    async with pipeline.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE messages SET content = content || ' (edited)' WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT 50)"
            )
        )
    pipeline.stub.set_latency(ms=0)
    pipeline.worker("--no-sweeper")

    await pipeline.wait_current("messages", 1000, timeout=120)
    async with pipeline.engine.connect() as conn:
        stale = (
            await conn.execute(
                text("SELECT count(*) FROM messages WHERE embedding_content_hash <> content_hash")
            )
        ).scalar_one()
    assert stale == 0


async def test_rows_published_while_nats_is_down_are_healed_by_the_sweeper(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    nats = NatsProcess(tmp_path / "own-nats")
    nats.start()
    pipeline.env["NATS_URL"] = nats.url
    await insert_messages(pipeline.engine, 200)
    nats.stop()
    broker = build_broker(pipeline.settings())
    with pytest.raises(Exception):  # noqa: B017 - any connection error: the broker is down
        await asyncio.wait_for(broker.startup(), 5)
    ids = [
        i
        async for page in pending_pages(pipeline.engine, MESSAGES, PendingFilter(), page_size=500)
        for i in page
    ]
    published, failed = await publish(
        pipeline.engine, enqueuer(None, broker), MESSAGES, ids, batch_size=100
    )
    assert published == 0 and len(failed) == 200  # the hook's situation: logged, not raised

    nats.start()
    try:
        pipeline.worker()  # with the sweeper
        await pipeline.wait_current("messages", 200, timeout=60)
    finally:
        for worker in pipeline.workers:
            worker.stop()
        nats.stop()


async def test_bad_rows_are_parked_and_the_rest_of_the_batch_embedded(pipeline: Pipeline) -> None:
    await insert_messages(pipeline.engine, 98)
    async with pipeline.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO messages (id, author, channel, content, sent_at) VALUES "
                "(gen_random_uuid(), 'a', 'c', '   ', now()), "
                "(gen_random_uuid(), 'a', 'c', 'POISON input the provider rejects', now())"
            )
        )
    pipeline.stub.reject_substring("POISON")
    pipeline.env["EMBEDDING_MAX_ATTEMPTS"] = "2"
    pipeline.worker("--no-sweeper")
    for attempt in (1, 2):  # two rounds: each bad row fails twice and is parked
        await pipeline.enqueue_all(MESSAGES)
        await pipeline.wait_current("messages", 98)
        await pipeline.wait_for(
            "SELECT count(*) = 2 AND min(embedding_attempts) >= "
            f"{attempt} FROM messages WHERE embedding IS NULL"
        )

    async with pipeline.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT content, embedding_error, embedding_attempts FROM messages WHERE embedding IS NULL ORDER BY content"
                )
            )
        ).all()
    assert [r.content for r in rows] == ["   ", "POISON input the provider rejects"]
    assert all(r.embedding_error and r.embedding_attempts == 2 for r in rows)
    assert "empty" in rows[0].embedding_error
    assert (await pipeline.counts("messages"))[1] == 98


async def test_content_edit_reembeds_and_other_edits_do_not(pipeline: Pipeline) -> None:
    await insert_messages(pipeline.engine, 10)
    pipeline.worker("--no-sweeper")
    await pipeline.enqueue_all(MESSAGES)
    await pipeline.wait_current("messages", 10)
    pipeline.stub.reset()
    async with pipeline.engine.begin() as conn:
        first, second = (
            await conn.execute(text("SELECT id FROM messages ORDER BY id LIMIT 2"))
        ).scalars()
        await conn.execute(
            text("UPDATE messages SET content = 'a brand new text' WHERE id = :id"), {"id": first}
        )
        await conn.execute(
            text(
                "UPDATE messages SET channel = 'elsewhere', extraction_status = 'done' WHERE id = :id"
            ),
            {"id": second},
        )

    await pipeline.enqueue_all(MESSAGES)
    await pipeline.wait_current("messages", 10)

    assert pipeline.stub.stats()["text_counts"] == {"a brand new text": 1}


async def test_two_workers_embed_each_text_exactly_once(pipeline: Pipeline) -> None:
    await insert_messages(pipeline.engine, 600)
    pipeline.stub.set_latency(ms=20)
    pipeline.worker("--no-sweeper")
    pipeline.worker("--no-sweeper")
    # Every id published twice, as a hook and a backfill racing would.
    await pipeline.enqueue_all(MESSAGES)
    async with pipeline.engine.begin() as conn:
        await conn.execute(text("UPDATE messages SET embedding_queued_at = NULL"))
    await pipeline.enqueue_all(MESSAGES)

    await pipeline.wait_current("messages", 600)
    await pipeline.wait_queue_drained()  # every duplicate delivered and acknowledged

    counts = pipeline.stub.stats()["text_counts"]
    assert len(counts) == 600
    assert set(counts.values()) == {1}
