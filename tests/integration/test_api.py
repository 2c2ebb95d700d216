"""The HTTP API through httpx + ASGITransport against the real database (and the stub provider)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.api.state import AppState
from app.core.config import Settings
from app.core.urls import to_asyncpg_url
from app.main import create_app
from app.models.api_token import TokenScope
from app.services import token_service
from app.services.embedding_jobs import embed_rows
from app.services.entities import MESSAGES
from tests.stubs.openai_stub import OpenAIStub

KEY = "sk-api-test-secret-123456"


@pytest.fixture(scope="module")
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(dims=384, api_key=KEY) as server:
        yield server


@pytest.fixture
async def api(
    make_db: Callable[[], str], stub: OpenAIStub, nats_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, AsyncEngine, AppState]]:
    url = make_db()
    settings = Settings(
        database_url=url,
        nats_url=nats_url,
        nats_stream=f"api{uuid.uuid4().hex[:8]}",
        embedding_provider="openai",
        embedding_model="text-embedding-3-small",
        embedding_base_url=stub.base_url,
        embedding_api_key=KEY,  # type: ignore[arg-type]
        embedding_dimensions=384,
    )
    app = create_app(settings)
    engine = create_async_engine(to_asyncpg_url(url))
    state = AppState(settings)
    app.state.tt = state  # the lifespan's job, done here so the test owns it
    async with state.sessions() as session:
        token, _ = await token_service.create_token(session, TokenScope.admin, "test_api")
        await session.commit()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://test",
        headers={"Authorization": f"Bearer {token}"},
    ) as client:
        yield client, engine, state
    await state.close()
    await engine.dispose()


async def embed_all(state: AppState, engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        ids = list((await conn.execute(text("SELECT id FROM messages"))).scalars())
    async with state.sessions() as session:
        entry = await state.registry.get(session)
    await embed_rows(
        state.engine, MESSAGES, ids, entry.service, model=entry.spec.model, max_attempts=3
    )


async def test_ingest_search_and_status(
    api: tuple[httpx.AsyncClient, AsyncEngine, AppState],
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


async def test_hybrid_finds_an_exact_code(
    api: tuple[httpx.AsyncClient, AsyncEngine, AppState],
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
    api: tuple[httpx.AsyncClient, AsyncEngine, AppState],
) -> None:
    client, engine, state = api
    created = await client.post(
        "/api/v1/messages/batch",
        json={
            "messages": [{"author": "a", "channel": "c", "content": f"text {i}"} for i in range(5)]
        },
    )
    await embed_all(state, engine)
    first = created.json()["ids"][0]
    similar = await client.get(
        f"/api/v1/semantic_search/messages/{first}/similar", params={"limit": 3}
    )
    assert similar.status_code == 200 and first not in [r["id"] for r in similar.json()["results"]]
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
    api: tuple[httpx.AsyncClient, AsyncEngine, AppState], body: dict[str, object], field: str
) -> None:
    client, _, _ = api
    if body.get("query") == "a\\u0000b":
        body = {"query": "a\u0000b"}
    response = await client.post("/api/v1/semantic_search/messages", json=body)
    assert response.status_code == 422
    assert field in response.json()["error"]


async def test_nul_in_message_content_is_422_and_nothing_is_written(
    api: tuple[httpx.AsyncClient, AsyncEngine, AppState],
) -> None:
    client, engine, _ = api
    response = await client.post(
        "/api/v1/messages", json={"author": "a", "channel": "c", "content": "bad\u0000text"}
    )
    assert response.status_code == 422 and "content" in response.json()["error"]
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM messages"))).scalar_one() == 0


async def test_unknown_ids_are_404(api: tuple[httpx.AsyncClient, AsyncEngine, AppState]) -> None:
    client, _, _ = api
    assert (await client.get(f"/api/v1/messages/{uuid.uuid4()}")).status_code == 404
    assert (await client.get("/api/v1/messages/not-a-uuid")).status_code == 422


async def test_provider_key_is_encrypted_and_never_returned(
    api: tuple[httpx.AsyncClient, AsyncEngine, AppState],
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


async def test_liveness_and_readiness(api: tuple[httpx.AsyncClient, AsyncEngine, AppState]) -> None:
    client, _, _ = api
    assert (await client.get("/api/v1/health/live")).status_code == 200
    ready = await client.get("/api/v1/health/ready")
    assert ready.json()["checks"]["database"] == "ok"
