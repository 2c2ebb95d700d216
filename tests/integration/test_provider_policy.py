"""Providers cannot be turned against the network: where a stored provider may connect, what
happens to its key when its host changes, and what `/test` tells about a remote server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from app.api.state import AppState
from app.auth import token_service
from app.core.config import Settings
from app.core.security import encrypt_secret
from app.main import create_app
from app.models.api_token import TokenScope
from testkit.stubs.openai_stub import OpenAIStub

KEY = "sk-policy-test-secret-123456"
NEW_KEY = "sk-policy-new-secret-654321"
PROVIDERS = "/api/v1/providers"


@pytest.fixture(scope="module")
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(dims=384, api_key=KEY) as server:
        yield server


@pytest.fixture(scope="module")
def other_stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(dims=384, api_key=KEY) as server:
        yield server


@asynccontextmanager
async def admin_client(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, AppState]]:
    app = create_app(settings)
    state = AppState(settings)
    app.state.tt = state
    async with state.sessions() as session:
        token, _ = await token_service.create_token(session, TokenScope.admin, "policy")
        await session.commit()
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 123))
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://127.0.0.1", headers=headers
    ) as client:
        try:
            yield client, state
        finally:
            await state.close()


@pytest.fixture
def settings_for(make_db: Callable[[], str], nats_url: str) -> Callable[..., Settings]:
    def make(allowed: str = "") -> Settings:
        return Settings(
            database_url=make_db(),
            nats_url=nats_url,
            nats_stream=f"policy{uuid.uuid4().hex[:8]}",
            embedding_dimensions=384,
            embedding_max_retries=0,
            provider_allowed_hosts=allowed,
        )

    return make


def body(base_url: str | None, name: str = "p", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "openai",
        "base_url": base_url,
        "api_key": KEY,
        "embedding_model": "text-embedding-3-small",
        "embedding_dimensions": 384,
        **extra,
    }


def refused_base_url(response: httpx.Response, *words: str) -> None:
    assert response.status_code == 422, response.text
    payload = response.json()
    assert payload["detail"][0]["field"] == "base_url", payload
    for word in words:
        assert word in payload["error"], (word, payload)


METADATA_URLS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.170.2/v1",
    "http://[fd00:ec2::254]/latest",
    "http://[::ffff:169.254.169.254]/",
    "http://[fe80::1]:8080/",
    "http://100.100.100.200/",
]


@pytest.mark.parametrize("url", METADATA_URLS)
async def test_metadata_and_link_local_are_always_refused(
    settings_for: Callable[..., Settings], url: str
) -> None:
    # Even a setting that lists everything does not open them.
    settings = settings_for("0.0.0.0/0,::/0,169.254.169.254,169.254.0.0/16")
    async with admin_client(settings) as (client, _):
        refused_base_url(await client.post(PROVIDERS, json=body(url)), "always refused")
        created = await client.post(PROVIDERS, json=body("https://api.openai.example", "ok"))
        # A public name that does not resolve here (no network) is refused as such...
        refused_base_url(created, "does not resolve")
        ok = await client.post(PROVIDERS, json=body("http://8.8.8.8/v1", "ok"))
        assert ok.status_code == 201, ok.text  # ...and a public address is fine.
        patched = await client.patch(f"{PROVIDERS}/{ok.json()['id']}", json={"base_url": url})
        refused_base_url(patched, "always refused")
        assert (await client.get(PROVIDERS)).json()[0]["base_url"] == "http://8.8.8.8/v1"


async def test_loopback_and_private_only_when_listed(
    settings_for: Callable[..., Settings], stub: OpenAIStub
) -> None:
    async with admin_client(settings_for()) as (client, _):
        for url in (
            stub.base_url,
            "http://localhost:11434",
            "http://10.1.2.3/v1",
            "http://192.168.0.10/v1",
            "http://[::1]:11434",
            "http://0.0.0.0:80/",
        ):
            refused_base_url(await client.post(PROVIDERS, json=body(url)), "address")
        # An Ollama without a base_url means 127.0.0.1:11434: refused as well, naming the fix.
        ollama = {**body(None), "type": "ollama"}
        refused_base_url(
            await client.post(PROVIDERS, json=ollama), "PROVIDER_ALLOWED_HOSTS=127.0.0.1"
        )
    async with admin_client(settings_for("127.0.0.1,10.0.0.0/8")) as (client, _):
        created = await client.post(PROVIDERS, json=body(stub.base_url))
        assert created.status_code == 201, created.text
        probe = (await client.post(f"{PROVIDERS}/{created.json()['id']}/test")).json()
        assert probe["ok"] is True, probe
        assert (
            await client.post(PROVIDERS, json=body("http://10.1.2.3/v1", "b"))
        ).status_code == 201
        refused_base_url(await client.post(PROVIDERS, json=body("http://192.168.0.10/v1", "c")))


async def test_the_policy_holds_when_the_request_is_made(
    settings_for: Callable[..., Settings], stub: OpenAIStub
) -> None:
    """A row whose host resolves to a refused address by the time it is used (DNS rebinding:
    the name pointed elsewhere when it was stored) is refused on connect; nothing is sent."""
    settings = settings_for()
    async with admin_client(settings) as (client, state):
        provider_id = uuid.uuid4()
        rebinding = stub.base_url.replace("127.0.0.1", "localhost")
        async with state.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO llm_providers (id, name, type, base_url, api_key_encrypted, "
                    "embedding_model, embedding_dimensions) VALUES (:id, 'rebound', 'openai', "
                    ":url, :key, 'text-embedding-3-small', 384)"
                ),
                {"id": provider_id, "url": rebinding, "key": encrypt_secret(KEY)},
            )
        before = stub.stats()["requests"]
        probe = (await client.post(f"{PROVIDERS}/{provider_id}/test")).json()
        assert probe == {
            "ok": False,
            "latency_ms": None,
            "dimensions": None,
            "error": "refused by the network policy (see PROVIDER_ALLOWED_HOSTS)",
        }
        assert stub.stats()["requests"] == before


async def test_a_new_host_without_a_new_key_drops_the_key(
    settings_for: Callable[..., Settings], stub: OpenAIStub, other_stub: OpenAIStub
) -> None:
    async with admin_client(settings_for("127.0.0.1")) as (client, state):
        created = (await client.post(PROVIDERS, json=body(stub.base_url))).json()
        url = f"{PROVIDERS}/{created['id']}"
        assert created["has_api_key"] is True
        # The same host (another path) keeps the key.
        same = await client.patch(url, json={"base_url": stub.base_url + "/"})
        assert same.json()["has_api_key"] is True, same.text
        moved = await client.patch(url, json={"base_url": other_stub.base_url})
        assert moved.status_code == 200 and moved.json()["has_api_key"] is False, moved.text
        async with state.engine.connect() as conn:
            stored = await conn.execute(text("SELECT api_key_encrypted FROM llm_providers"))
            assert stored.scalar_one() is None
        other_stub.reset()
        probe = (await client.post(f"{url}/test")).json()
        assert probe["ok"] is False and "401" in probe["error"], probe
        assert other_stub.authorizations and all(
            KEY not in (auth or "") for auth in other_stub.authorizations
        ), other_stub.authorizations
        # A new host with a new key in the same request keeps that key.
        back = await client.patch(url, json={"base_url": stub.base_url, "api_key": KEY})
        assert back.json()["has_api_key"] is True
        assert (await client.post(f"{url}/test")).json()["ok"] is True
        moved = await client.patch(url, json={"base_url": other_stub.base_url, "api_key": NEW_KEY})
        assert moved.json()["has_api_key"] is True


async def test_the_probe_never_echoes_the_remote_body(
    settings_for: Callable[..., Settings], stub: OpenAIStub
) -> None:
    """A server answering with a long body (another service's page, a secret): none of it."""
    secret_page = "INTERNAL-ADMIN-PAGE " + "x" * 5000 + " db_password=hunter2"
    async with admin_client(settings_for("127.0.0.1")) as (client, _):
        created = (await client.post(PROVIDERS, json=body(stub.base_url))).json()
        url = f"{PROVIDERS}/{created['id']}/test"
        seen = []
        for status in (400, 401, 404, 418, 500, 503):
            stub.script({"status": status, "message": secret_page})
            answer = await client.post(url)
            assert answer.status_code == 200
            probe = answer.json()
            assert probe["ok"] is False, probe
            for piece in ("INTERNAL", "xxxxxxxx", "hunter2", "stub_error"):
                assert piece not in answer.text, (status, answer.text)
            assert len(probe["error"]) < 100, probe
            seen.append(probe["error"])
        assert "401" in seen[1] and "404" in seen[2] and "500" in seen[4], seen
