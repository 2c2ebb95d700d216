"""Knowledge extraction with the hook: what extraction makes is embedded, with no backfill."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from app.broker import build_broker
from app.core.config import Settings
from app.knowledge.extraction_service import extract_and_save
from app.knowledge.offline_extractor import OfflineExtractor
from app.knowledge.tasks import queue_embeddings
from testkit.stubs.chat_stub import ChatStub
from tests.integration.conftest import Pipeline, insert_messages

pytestmark = pytest.mark.slow


def one_atom_per_message(request: dict[str, Any]) -> str:
    """A chat model that answers with one problem atom per message it was shown."""
    user = next(
        m["content"]
        for m in reversed(request["messages"])
        if m["role"] == "user" and "[" in m["content"]
    )
    messages = json.loads(user[user.index("[") :])
    atoms = [
        {
            "type": "problem",
            "title": f"Problem reported in {m['channel']} #{n}",
            "content": m["content"],
            "confidence": 0.9,
            "topic": "Deploys",
            "source_message_ids": [m["id"]],
        }
        for n, m in enumerate(messages)
    ]
    return json.dumps(
        {"topics": [{"name": "Deploys", "description": "deploy talk"}], "atoms": atoms}
    )


async def message_ids(pipeline: Pipeline) -> list[str]:
    async with pipeline.engine.connect() as conn:
        return [
            str(i)
            for i in (await conn.execute(text("SELECT id FROM messages ORDER BY id"))).scalars()
        ]


async def test_llm_extraction_saves_atoms_and_the_hook_embeds_them(pipeline: Pipeline) -> None:
    await insert_messages(pipeline.engine, 50)
    with ChatStub(one_atom_per_message) as chat:
        pipeline.env.update(
            CHAT_MODEL="stub-chat", CHAT_BASE_URL=chat.base_url, CHAT_API_KEY="chat-key"
        )
        pipeline.worker("--no-sweeper")  # no sweeper, no backfill: only the hook can embed
        broker = build_broker(pipeline.settings())
        await broker.startup()
        try:
            from taskiq.kicker import AsyncKicker

            kicker: AsyncKicker[Any, Any] = AsyncKicker(
                "knowledge.extract_from_messages", broker, {}
            )
            await kicker.kiq(await message_ids(pipeline), None)
        finally:
            await broker.shutdown()
        await pipeline.wait_current("atoms", 50)
        await pipeline.wait_current("messages", 50)
        assert chat.request_count == 1
    async with pipeline.engine.connect() as conn:
        statuses = set(
            (await conn.execute(text("SELECT extraction_status FROM messages"))).scalars()
        )
        links = (await conn.execute(text("SELECT count(*) FROM atom_messages"))).scalar_one()
    assert statuses == {"done"} and links == 50


async def test_offline_extraction_is_idempotent_and_multilingual(pipeline: Pipeline) -> None:
    samples = [
        "Login is broken again: users get ERR_AUTH_401 after the deploy",
        "Fixed it: the hotfix for ERR_AUTH_401 is deployed, the token cache was stale",
        "We decided to go with Postgres partitioning for the events table",
        "Хто знає, чому падає збірка фронтенду на CI?",
        "Заблоковано: чекаємо доступ до продакшн бази від DevOps",
        "There is a risk the migration might break the nightly export",
    ]
    async with pipeline.engine.begin() as conn:
        for n, content in enumerate(samples):
            await conn.execute(
                text(
                    "INSERT INTO messages (id, author, channel, content, sent_at) VALUES (gen_random_uuid(), 'a', 'backend', :c, now() + make_interval(secs => :n))"
                ),
                {"c": content, "n": n},
            )
    from sqlalchemy.ext.asyncio import AsyncSession

    ids = [uuid.UUID(i) for i in await message_ids(pipeline)]
    for _ in range(2):
        async with AsyncSession(pipeline.engine, expire_on_commit=False) as session:
            summary = await extract_and_save(session, ids, OfflineExtractor())
            await session.commit()
    async with pipeline.engine.connect() as conn:
        atoms = (await conn.execute(text("SELECT type, title FROM atoms"))).all()
    assert len(atoms) == len(summary.atom_ids), "the second run added no duplicates"
    assert summary.new_atom_ids == []
    assert len({a.type for a in atoms}) >= 4
    assert any("заблоковано" in a.title.lower() or "чому" in a.title.lower() for a in atoms)

    pipeline.worker("--no-sweeper")
    broker = build_broker(pipeline.settings())
    await broker.startup()
    try:
        queued = await queue_embeddings(
            pipeline.engine,
            atom_ids=summary.atom_ids,
            message_ids=ids,
            provider_id=None,
            batch_size=100,
            target=broker,
        )
    finally:
        await broker.shutdown()
    assert queued == {"atoms": len(atoms), "messages": len(samples)}
    await pipeline.wait_current("atoms", len(atoms))


async def test_broker_down_during_the_hook_extraction_succeeds_and_the_sweeper_heals(
    pipeline: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    await insert_messages(pipeline.engine, 20)
    ids = [uuid.UUID(i) for i in await message_ids(pipeline)]
    from sqlalchemy.ext.asyncio import AsyncSession

    async with AsyncSession(pipeline.engine, expire_on_commit=False) as session:
        summary = await extract_and_save(session, ids, OfflineExtractor())
        await session.commit()
    down = build_broker(
        Settings(nats_url="nats://127.0.0.1:1", nats_stream=pipeline.env["NATS_STREAM"])
    )
    with caplog.at_level(logging.WARNING):
        queued = await queue_embeddings(
            pipeline.engine,
            atom_ids=summary.atom_ids,
            message_ids=ids,
            provider_id=None,
            batch_size=100,
            target=down,
        )
    assert queued == {"atoms": 0, "messages": 0}
    assert str(ids[0]) in caplog.text and "sweeper" in caplog.text

    pipeline.worker()  # with the sweeper
    await pipeline.wait_current("messages", 20, timeout=60)
    await pipeline.wait_current("atoms", len(summary.atom_ids), timeout=60)


async def test_always_invalid_llm_answers_fail_clearly_and_save_nothing(pipeline: Pipeline) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.knowledge.base import ExtractionError
    from app.knowledge.llm_extractor import LLMExtractor

    await insert_messages(pipeline.engine, 5)
    ids = [uuid.UUID(i) for i in await message_ids(pipeline)]
    with ChatStub(lambda _request: "this is not json") as chat:
        extractor = LLMExtractor("stub-chat", chat.base_url, "chat-key", max_attempts=3)
        async with AsyncSession(pipeline.engine, expire_on_commit=False) as session:
            with pytest.raises(ExtractionError) as info:
                await extract_and_save(session, ids, extractor)
        await extractor.aclose()
        assert chat.request_count == 3
    assert "JSON" in info.value.message or "json" in info.value.message
    async with pipeline.engine.connect() as conn:
        counts = (
            await conn.execute(
                text("SELECT (SELECT count(*) FROM atoms), (SELECT count(*) FROM topics)")
            )
        ).one()
    assert tuple(counts) == (0, 0)


async def test_invalid_then_valid_llm_answer_succeeds_after_a_retry(pipeline: Pipeline) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.knowledge.llm_extractor import LLMExtractor

    await insert_messages(pipeline.engine, 4)
    ids = [uuid.UUID(i) for i in await message_ids(pipeline)]
    with ChatStub(one_atom_per_message) as chat:
        chat.enqueue("{ not valid json")
        extractor = LLMExtractor("stub-chat", chat.base_url, "chat-key", max_attempts=3)
        async with AsyncSession(pipeline.engine, expire_on_commit=False) as session:
            summary = await extract_and_save(session, ids, extractor)
            await session.commit()
        await extractor.aclose()
        assert chat.request_count == 2
    assert len(summary.new_atom_ids) == 4
