"""The HTTP API through httpx + ASGITransport against the real database (and the stub provider)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.api.state import AppState
from app.core.urls import to_asyncpg_url
from app.embedding.entities import MESSAGES
from app.embedding.jobs import embed_rows
from app.embedding.registry import EmbeddingRegistry
from app.models.api_token import TokenScope
from testkit.stubs.openai_stub import OpenAIStub
from tests.apps import app_with_state, mint_token, stub_settings

KEY = "sk-api-test-secret-123456"


@pytest.fixture(scope="module")
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(dims=384, api_key=KEY) as server:
        yield server


ApiFixture = tuple[httpx.AsyncClient, AsyncEngine, AppState]


@pytest.fixture
async def api(
    make_db: Callable[[], str], stub: OpenAIStub, nats_url: str
) -> AsyncIterator[ApiFixture]:
    async with open_api(make_db(), stub, nats_url) as opened:
        yield opened


@asynccontextmanager
async def open_api(
    url: str, stub: OpenAIStub, nats_url: str, **extra: object
) -> AsyncIterator[ApiFixture]:
    """The app over ASGITransport with its state set by hand (no broker: reads and limits only;
    tests/integration/test_api_through_the_broker.py drives the write path through the lifespan)."""
    settings = stub_settings(url, stub, nats_url, key=KEY, stream="api", **extra)
    app, state = app_with_state(settings)
    engine = create_async_engine(to_asyncpg_url(url))
    token = await mint_token(state, TokenScope.admin, "test_api")
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://test",
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            yield client, engine, state
    finally:
        await state.close()
        await engine.dispose()


async def embed_all(state: AppState, engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        ids = list((await conn.execute(text("SELECT id FROM messages"))).scalars())
    registry = EmbeddingRegistry(state.settings)
    try:
        async with state.sessions() as session:
            entry = await registry.get(session)
        await embed_rows(
            state.engine, MESSAGES, ids, entry.service, model=entry.spec.model, max_attempts=3
        )
    finally:
        await registry.aclose()


async def test_ingest_search_and_status(
    api: ApiFixture,
) -> None:
    client, engine, state = api
    body = {
        "messages": [
            {"author": "a", "channel": f"c{i % 3}", "content": f"deploy {i} broke checkout"}
            for i in range(30)
        ]
    }
    created = await client.post("/api/v1/messages/batch", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["created"] == 30
    await embed_all(state, engine)

    response = await client.post(
        "/api/v1/semantic_search/messages", json={"query": "deploy 7 broke checkout", "limit": 5}
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert len(result["results"]) == 5 and result["not_embedded"] == 0
    assert (
        result["results"][0]["item"]["content"] == "deploy 7 broke checkout"
    )  # same text, same stub vector
    assert result["results"][0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert result["results"][0]["matched_by"] == ["vector"]

    filtered = await client.post(
        "/api/v1/semantic_search/messages", json={"query": "checkout", "limit": 10, "channel": "c1"}
    )
    assert len(filtered.json()["results"]) == 10 and {
        r["item"]["channel"] for r in filtered.json()["results"]
    } == {"c1"}

    status = (await client.get("/api/v1/embeddings/status")).json()
    messages = next(c for c in status["coverage"] if c["entity"] == "messages")
    assert messages["total"] == messages["embedded"] == 30
    assert all(i["healthy"] for i in status["indexes"]) and status["provider"]["dimensions"] == 384
    memory = status["memory"]
    assert memory["shared_buffers_bytes"] >= 128 * 1024 * 1024 and memory["indexes_fit"] is True
    assert 0 < memory["hnsw_index_bytes"] <= memory["shared_buffers_bytes"]


async def test_hybrid_finds_an_exact_code(
    api: ApiFixture,
) -> None:
    client, engine, state = api
    messages = [
        {
            "author": "a",
            "channel": "ops",
            "content": f"the staging box is slow again, look at host {i}",
        }
        for i in range(40)
    ]
    messages.append(
        {"author": "a", "channel": "ops", "content": "odd failure QX-4471 on the staging box"}
    )
    await client.post("/api/v1/messages/batch", json={"messages": messages})
    await embed_all(state, engine)
    hybrid = (
        await client.post(
            "/api/v1/semantic_search/messages",
            json={"query": "QX-4471", "limit": 3, "mode": "hybrid"},
        )
    ).json()
    top = hybrid["results"][0]
    assert "QX-4471" in top["item"]["content"] and "fulltext" in top["matched_by"]


async def test_similar_messages_exclude_the_message_itself(
    api: ApiFixture,
) -> None:
    client, engine, state = api
    created = await client.post(
        "/api/v1/messages/batch",
        json={
            "messages": [{"author": "a", "channel": "c", "content": f"text {i}"} for i in range(5)]
        },
    )
    await embed_all(state, engine)
    first, *others = created.json()["ids"]
    similar = await client.get(
        f"/api/v1/semantic_search/messages/{first}/similar", params={"limit": 3}
    )
    assert similar.status_code == 200, similar.text
    hits = [r["id"] for r in similar.json()["results"]]
    assert len(hits) == 3 and set(hits) <= set(others), hits
    everyone = await client.get(
        f"/api/v1/semantic_search/messages/{first}/similar", params={"limit": 10}
    )
    assert sorted(r["id"] for r in everyone.json()["results"]) == sorted(others)
    assert (
        await client.get(f"/api/v1/semantic_search/messages/{uuid.uuid4()}/similar")
    ).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": "", "limit": 5}, "query"),
        ({"query": "x", "limit": 0}, "limit"),
        ({"query": "x", "limit": 100000}, "limit"),
        ({"query": "x" * 3000}, "query"),
        ({"query": "x", "unknown": 1}, "unknown"),
        ({"query": "a\\u0000b"}, "query"),
    ],
)
async def test_bad_search_input_is_a_422_naming_the_field(
    api: ApiFixture, body: dict[str, object], field: str
) -> None:
    client, _, _ = api
    if body.get("query") == "a\\u0000b":
        body = {"query": "a\u0000b"}
    response = await client.post("/api/v1/semantic_search/messages", json=body)
    assert response.status_code == 422
    assert field in response.json()["error"]


async def test_nul_in_message_content_is_422_and_nothing_is_written(
    api: ApiFixture,
) -> None:
    client, engine, _ = api
    response = await client.post(
        "/api/v1/messages", json={"author": "a", "channel": "c", "content": "bad\u0000text"}
    )
    assert response.status_code == 422 and "content" in response.json()["error"]
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM messages"))).scalar_one() == 0


async def test_unknown_ids_are_404(api: ApiFixture) -> None:
    client, _, _ = api
    assert (await client.get(f"/api/v1/messages/{uuid.uuid4()}")).status_code == 404
    assert (await client.get("/api/v1/messages/not-a-uuid")).status_code == 422


async def test_provider_key_is_encrypted_and_never_returned(
    api: ApiFixture,
    stub: OpenAIStub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, engine, _ = api
    body = {
        "name": "stub",
        "type": "openai",
        "base_url": stub.base_url,
        "api_key": KEY,
        "embedding_model": "text-embedding-3-small",
        "embedding_dimensions": 384,
    }
    created = await client.post("/api/v1/providers", json=body)
    assert created.status_code == 201, created.text
    assert KEY not in created.text and created.json()["has_api_key"] is True
    listed = await client.get("/api/v1/providers")
    assert KEY not in listed.text
    async with engine.connect() as conn:
        stored = (
            await conn.execute(text("SELECT api_key_encrypted FROM llm_providers"))
        ).scalar_one()
    assert stored and KEY not in stored
    probe = await client.post(f"/api/v1/providers/{created.json()['id']}/test")
    assert probe.json()["ok"] is True and probe.json()["dimensions"] == 384
    await client.patch(
        f"/api/v1/providers/{created.json()['id']}", json={"api_key": "sk-wrong-key-000000000"}
    )
    failed = await client.post(f"/api/v1/providers/{created.json()['id']}/test")
    assert failed.json()["ok"] is False and "401" in failed.json()["error"]
    assert "sk-wrong-key" not in failed.text and KEY not in caplog.text


async def test_liveness_and_readiness(api: ApiFixture) -> None:
    client, _, _ = api
    assert (await client.get("/api/v1/health/live")).status_code == 200
    ready = await client.get("/api/v1/health/ready")
    checks = ready.json()["checks"]
    assert checks["database"] == "ok"
    assert ready.status_code == (200 if set(checks.values()) == {"ok"} else 503), ready.text


async def test_extract_has_a_rate_limit_group_of_its_own(
    make_db: Callable[[], str], stub: OpenAIStub, nats_url: str
) -> None:
    """Past RATE_LIMIT_EXTRACT_PER_MINUTE a token gets 429 with Retry-After; search still answers."""
    async with open_api(make_db(), stub, nats_url, rate_limit_extract_per_minute=2) as opened:
        client = opened[0]
        body = {"message_ids": [str(uuid.uuid4())]}
        for _ in range(2):
            assert (await client.post("/api/v1/knowledge/extract", json=body)).status_code == 202
        limited = await client.post("/api/v1/knowledge/extract", json=body)
        assert limited.status_code == 429, limited.text
        assert limited.json()["error"].startswith(
            "rate limit exceeded: 2 extract requests a minute per token"
        )
        assert int(limited.headers["retry-after"]) >= 1
        search = {"query": "anything", "limit": 1}
        assert (
            await client.post("/api/v1/semantic_search/messages", json=search)
        ).status_code == 200


async def test_one_default_provider_and_the_status_follows_it(
    api: ApiFixture, stub: OpenAIStub
) -> None:
    """is_default moves between providers (never two); an inactive default falls back to the
    settings' provider (resolution: provider_id, else the active default, else the settings)."""
    client, _, _ = api

    async def create(name: str) -> str:
        body = {
            "name": name,
            "type": "openai",
            "base_url": stub.base_url,
            "api_key": KEY,
            # the active space's model (another one is refused: a switch moves to it)
            "embedding_model": "text-embedding-3-small",
            "embedding_dimensions": 384,
            "is_default": True,
        }
        created = await client.post("/api/v1/providers", json=body)
        assert created.status_code == 201, created.text
        return str(created.json()["id"])

    async def defaults() -> list[str]:
        listed = (await client.get("/api/v1/providers")).json()
        return [row["name"] for row in listed if row["is_default"]]

    async def status_provider() -> str:
        return str((await client.get("/api/v1/embeddings/status")).json()["provider"]["name"])

    assert await status_provider() == "settings:openai"
    first = await create("first")
    assert await status_provider() == "first"
    await create("second")
    assert await defaults() == ["second"]
    patched = await client.patch(f"/api/v1/providers/{first}", json={"is_default": True})
    assert patched.status_code == 200 and await defaults() == ["first"]
    assert await status_provider() == "first"
    await client.patch(f"/api/v1/providers/{first}", json={"is_active": False})
    assert await status_provider() == "settings:openai"
