"""embed_rows' fill and leases: a task takes other waiting rows into its batch, and when it fails
(the provider, or any later step) hands every row back, the filled-in ones to the sweeper; a
lease a failed call left makes its rows busy until it runs out."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.core.errors import EmbeddingProviderError
from app.core.urls import to_asyncpg_url
from app.db import create_engine, session_factory
from app.embedding.entities import MESSAGES
from app.embedding.jobs import Lease, embed_rows
from app.embedding.queue import mark_queued
from app.embedding.registry import EmbeddingRegistry, ServiceEntry
from testkit.stubs.openai_stub import OpenAIStub
from tests.integration.conftest import DIMS, insert_messages


@pytest.fixture
async def db(make_db: Callable[[], str]) -> AsyncIterator[AsyncEngine]:
    # the app's engine: the vector codec registered
    engine = create_engine(to_asyncpg_url(make_db()))
    yield engine
    await engine.dispose()


async def _service(engine: AsyncEngine, stub: OpenAIStub) -> tuple[EmbeddingRegistry, ServiceEntry]:
    settings = Settings(
        embedding_provider="openai",
        embedding_model="text-embedding-3-small",
        embedding_base_url=stub.base_url,
        embedding_api_key="test-key",  # type: ignore[arg-type]
        embedding_dimensions=DIMS,
        embedding_max_retries=0,  # a provider error surfaces at once
    )
    registry = EmbeddingRegistry(settings)
    async with session_factory(engine)() as session:
        return registry, await registry.get(session)


async def _ids(engine: AsyncEngine) -> list[uuid.UUID]:
    async with engine.connect() as conn:
        return list((await conn.execute(text("SELECT id FROM messages ORDER BY id"))).scalars())


async def test_a_task_fills_its_batch_with_waiting_rows_in_one_provider_call(
    db: AsyncEngine, stub: OpenAIStub
) -> None:
    await insert_messages(db, 60)
    ids = await _ids(db)
    async with db.begin() as conn:  # parked rows are left to `backfill --retry-failed`
        await conn.execute(
            text("UPDATE messages SET embedding_attempts = 3 WHERE id = ANY(:ids)"),
            {"ids": ids[-5:]},
        )
    registry, entry = await _service(db, stub)
    try:
        stats = await embed_rows(
            db, MESSAGES, [ids[-6]], entry.service, model=entry.spec.model, max_attempts=3,
            fill_to=40,
        )  # fmt: skip
    finally:
        await registry.aclose()

    assert (stats.embedded, stats.filled) == (40, 39)
    assert stub.stats()["requests"] == 1
    async with db.connect() as conn:
        done = set(
            (
                await conn.execute(text("SELECT id FROM messages WHERE embedding IS NOT NULL"))
            ).scalars()
        )
    assert ids[-6] in done and len(done) == 40
    assert not done & set(ids[-5:])


async def test_rows_filled_in_go_back_to_the_sweeper_when_the_provider_fails(
    db: AsyncEngine, stub: OpenAIStub
) -> None:
    await insert_messages(db, 20)
    ids = await _ids(db)
    await mark_queued(db, MESSAGES, ids)  # every row has a task on the queue
    registry, entry = await _service(db, stub)
    stub.set_outage({"status": 503})
    try:
        with pytest.raises(EmbeddingProviderError):
            await embed_rows(
                db, MESSAGES, [ids[0]], entry.service, model=entry.spec.model, max_attempts=3,
                fill_to=20,
            )  # fmt: skip
    finally:
        await registry.aclose()

    async with db.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT id, embedding_claimed_by, embedding_queued_at FROM messages")
            )
        ).all()
    assert all(claimed is None for _, claimed, _ in rows)  # no lease left to expire
    queued = {row_id for row_id, _, queued_at in rows if queued_at is not None}
    assert queued == {ids[0]}  # its own task retries it; the others are the sweeper's now


async def test_a_call_that_fails_after_the_provider_gives_every_row_back(
    db: AsyncEngine, stub: OpenAIStub
) -> None:
    """A failure at the write (here a constraint the vectors break; in production a connection
    broken mid-statement) releases the leases as a provider failure does: otherwise the rows'
    own tasks, which took them as this call's, are done, and nothing takes them again."""
    await insert_messages(db, 20)
    ids = await _ids(db)
    await mark_queued(db, MESSAGES, ids)
    async with db.begin() as conn:  # the claims pass it (embedding stays NULL), the write not
        await conn.execute(
            text("ALTER TABLE messages ADD CONSTRAINT no_vectors CHECK (embedding IS NULL)")
        )
    registry, entry = await _service(db, stub)
    handed_back: list[bool] = []
    try:
        with pytest.raises(asyncpg.CheckViolationError, match="no_vectors"):
            await embed_rows(
                db, MESSAGES, ids[:5], entry.service, model=entry.spec.model, max_attempts=3,
                fill_to=20, requeued=lambda: handed_back.append(True),
            )  # fmt: skip
    finally:
        await registry.aclose()
    assert handed_back == [True]  # the worker's sweeper is woken for the filled-in rows

    assert stub.stats()["requests"] == 1  # the provider was called: the write failed
    async with db.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT id, embedding_claimed_by, embedding_queued_at FROM messages")
            )
        ).all()
    assert all(claimed is None for _, claimed, _ in rows)
    queued = {row_id for row_id, _, queued_at in rows if queued_at is not None}
    assert queued == set(ids[:5])  # its own task retries them; the rest are the sweeper's


async def test_rows_a_finished_call_left_leased_are_busy_until_the_lease_runs_out(
    db: AsyncEngine, stub: OpenAIStub
) -> None:
    """A lease of this process whose call ended without releasing it (the database was down)
    makes the rows busy, with the time it has left: the task looks again then, instead of
    taking the rows as another running call's and leaving them to the sweeper."""
    await insert_messages(db, 6)
    ids = await _ids(db)
    ended_call = Lease().owner  # this host and process, a call that is not running
    async with db.begin() as conn:
        await conn.execute(
            text(
                "UPDATE messages SET embedding_claimed_by = :owner, "
                "embedding_claim_expires_at = now() + interval '20 seconds' WHERE id = ANY(:ids)"
            ),
            {"owner": ended_call, "ids": ids[:3]},
        )
    registry, entry = await _service(db, stub)
    try:
        stats = await embed_rows(
            db, MESSAGES, ids, entry.service, model=entry.spec.model, max_attempts=3
        )
    finally:
        await registry.aclose()

    assert stats.embedded == 3
    assert sorted(stats.busy) == sorted(ids[:3])
    assert 15 < stats.busy_seconds <= 20
