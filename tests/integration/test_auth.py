"""Bearer-token access control through the real app and database: 401, 403, revocation, storage."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy import text

from app.api.state import AppState
from app.auth import token_service
from app.cli.token import SCOPES
from app.core.config import Settings
from app.core.embedded import free_port
from app.core.errors import ConfigurationError
from app.core.log import RedactSecrets
from app.core.supervisor import api_child, stop_all
from app.main import create_app
from app.models.api_token import TokenScope
from testkit.stubs.openai_stub import OpenAIStub
from tests.apps import app_with_state, mint_token, stub_settings

KEY = "sk-auth-test-secret-123456"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Api:
    app: FastAPI
    client: httpx.AsyncClient
    state: AppState

    async def token(self, scope: TokenScope) -> str:
        return await mint_token(self.state, scope, f"test {scope}")

    async def call(self, method: str, path: str, token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = {} if method in ("POST", "PATCH") else None
        return await self.client.request(method, path, headers=headers, json=body)


@pytest.fixture(scope="module")
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(dims=384, api_key=KEY) as server:
        yield server


def settings_for(url: str, stub: OpenAIStub, nats_url: str, **extra: object) -> Settings:
    return stub_settings(url, stub, nats_url, key=KEY, stream="auth", **extra)


async def open_api(settings: Settings, base_url: str = "http://test") -> Api:
    app, state = app_with_state(settings)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)
    return Api(app, client, state)


@pytest.fixture
async def api(make_db: Callable[[], str], stub: OpenAIStub, nats_url: str) -> AsyncIterator[Api]:
    opened = await open_api(settings_for(make_db(), stub, nats_url))
    yield opened
    await opened.client.aclose()
    await opened.state.close()


def protected_calls(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every API route but health, path parameters filled with a uuid."""
    routes = [
        (method, context.path)
        for context in iter_route_contexts(app.routes)  # included routers, flattened
        if isinstance(context.original_route, APIRoute)
        for method in sorted(context.methods or ())
    ]
    documented = [
        (method.upper(), path) for path, ops in app.openapi()["paths"].items() for method in ops
    ]
    assert sorted(routes) == sorted(documented)  # nothing hidden from either list
    return [
        (method, re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path))
        for method, path in routes
        if not path.startswith("/api/v1/health")
    ]


async def test_every_route_but_health_is_401_without_a_valid_token(api: Api) -> None:
    calls = protected_calls(api.app)
    assert len(calls) >= 15
    unknown = "tt_" + "A" * 43
    for method, path in calls:
        for token in (None, unknown, "not-a-token"):
            response = await api.call(method, path, token)
            assert response.status_code == 401, (method, path, token, response.text)
            assert response.json() == {"error": "missing or invalid bearer token", "detail": None}
            assert response.headers["www-authenticate"].startswith("Bearer")
        basic = await api.client.request(method, path, headers={"Authorization": "Basic eDp5"})
        assert basic.status_code == 401, (method, path)
    assert (await api.call("GET", "/api/v1/health/live")).status_code == 200
    ready = await api.call("GET", "/api/v1/health/ready")
    # No token needed; 503 exactly when a check failed (this app never started its broker,
    # so which one it is depends on the process; the stack test shows the 200 with both up).
    checks = ready.json()["checks"]
    assert checks["database"] == "ok"
    assert ready.status_code == (200 if set(checks.values()) == {"ok"} else 503), ready.text


def test_openapi_declares_the_bearer_scheme_on_every_route_but_health(api: Api) -> None:
    schema = api.app.openapi()
    assert schema["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A token from `tasktracker token create`: `Authorization: Bearer tt_...`.",
    }
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            secured = operation.get("security") == [{"bearer": []}]
            assert secured != path.startswith("/api/v1/health"), (method, path)
            if secured:
                assert {"401", "403"} <= set(operation["responses"]), (method, path)


async def test_scopes_are_ordered_and_enforced(api: Api) -> None:
    search, write, admin = [await api.token(scope) for scope in TokenScope]
    message = {"author": "a", "channel": "c", "content": "deploy broke checkout"}
    provider_id = uuid.uuid4()
    writes = [
        ("POST", "/api/v1/messages", message),
        ("POST", "/api/v1/messages/batch", {"messages": [message]}),
        ("PATCH", f"/api/v1/messages/{uuid.uuid4()}", {"content": "x"}),
        ("POST", "/api/v1/embeddings/messages/batch", {"ids": [str(uuid.uuid4())]}),
        ("POST", "/api/v1/knowledge/extract", {"message_ids": [str(uuid.uuid4())]}),
    ]
    admins = [
        ("GET", "/api/v1/providers", None),
        ("POST", "/api/v1/providers", {"name": "p", "type": "local"}),
        ("PATCH", f"/api/v1/providers/{provider_id}", {"name": "q"}),
        ("POST", f"/api/v1/providers/{provider_id}/test", None),
        ("POST", "/api/v1/embeddings/messages/batch", {"all_missing": True}),  # a backfill
        ("POST", "/api/v1/embeddings/atoms/batch", {"all_missing": True}),
    ]

    async def status(
        method: str, path: str, body: object, token: str, needed: str = "write"
    ) -> int:
        headers = {"Authorization": f"Bearer {token}"}
        response = await api.client.request(method, path, json=body, headers=headers)
        if response.status_code == 403:
            granted = {search: "search", write: "write", admin: "admin"}[token]
            assert response.json()["error"] == (
                f"this token's scope ({granted}) does not allow this request; it needs {needed}"
            ), response.text
            assert response.headers["www-authenticate"] == (
                f'Bearer error="insufficient_scope", scope="{needed}"'
            )
        return response.status_code

    # The 403 names the first scope the token lacks: the batch routes ask for write before
    # their all_missing asks for admin.
    for method, path, body in writes + admins:
        needed = "admin" if path.startswith("/api/v1/providers") else "write"
        assert await status(method, path, body, search, needed) == 403, (method, path)
    for method, path, body in admins:
        assert await status(method, path, body, write, "admin") == 403, (method, path)
    # A write token may PATCH, queue ids and extract (no 403; 404/202 from the route itself).
    for method, path, body in writes[2:]:
        assert await status(method, path, body, write) in (200, 202, 404), (method, path)
    # A scope covers the ones below it: admin may ingest, write may read.
    assert await status("POST", "/api/v1/messages", message, write) == 201
    assert await status("POST", "/api/v1/messages/batch", {"messages": [message]}, admin) == 201
    assert await status("GET", "/api/v1/providers", None, admin) == 200
    for token in (search, write, admin):
        query = {"query": "checkout", "limit": 5}
        assert await status("POST", "/api/v1/semantic_search/messages", query, token) == 200
        assert await status("GET", "/api/v1/messages", None, token) == 200
        assert await status("GET", "/api/v1/embeddings/status", None, token) == 200


async def test_a_revoked_token_is_refused_like_an_unknown_one(api: Api) -> None:
    token = await api.token(TokenScope.search)
    assert (await api.call("GET", "/api/v1/messages", token)).status_code == 200
    async with api.state.sessions() as session:
        info, was_active = await token_service.revoke_token(session, token[3:11])
        await session.commit()
    assert was_active and info.revoked_at is not None
    revoked = await api.call("GET", "/api/v1/messages", token)
    unknown = await api.call("GET", "/api/v1/messages", "tt_" + "B" * 43)
    assert revoked.status_code == unknown.status_code == 401
    assert revoked.json() == unknown.json()
    assert revoked.headers["www-authenticate"] == unknown.headers["www-authenticate"]


async def test_the_table_holds_no_plain_token_and_last_use_is_recorded(api: Api) -> None:
    tokens = {scope: await api.token(scope) for scope in TokenScope}
    assert all(re.fullmatch(r"tt_[A-Za-z0-9_-]{43}", token) for token in tokens.values())
    assert (await api.call("GET", "/api/v1/messages", tokens[TokenScope.search])).status_code == 200
    async with api.state.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT t::text FROM api_tokens t"))).scalars().all()
        hashes = set((await conn.execute(text("SELECT token_hash FROM api_tokens"))).scalars())
        used = (
            await conn.execute(text("SELECT scope FROM api_tokens WHERE last_used_at IS NOT NULL"))
        ).scalars()
        assert list(used) == ["search"]
    assert len(rows) == 3
    for token in tokens.values():
        assert all(token not in row and token[3:] not in row for row in rows)
        assert hashlib.sha256(token.encode()).hexdigest() in hashes
    listed = await _list(api)
    assert {info.prefix for info in listed} == {token[3:11] for token in tokens.values()}
    assert not any(token[3:] in repr(info) for info in listed for token in tokens.values())


async def _list(api: Api) -> list[token_service.TokenInfo]:
    async with api.state.sessions() as session:
        return await token_service.list_tokens(session)


async def test_tokens_never_reach_the_logs(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    token = await api.token(TokenScope.search)
    wrong = "tt_" + "-" + "C" * 42
    caplog.set_level(logging.DEBUG)
    for used in (token, wrong, token):
        await api.call("GET", "/api/v1/messages", used)
        await api.call("GET", "/api/v1/providers", used)
    records = caplog.records
    for secret in (token, token[3:], wrong[3:], KEY):
        assert all(secret not in record.getMessage() for record in records)
    # The last line of defence, for a message that would carry one anyway.
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "sent %s; header Bearer %s", (wrong, token), None
    )
    RedactSecrets().filter(record)
    assert token[3:] not in record.getMessage() and wrong[3:] not in record.getMessage()
    assert "tt_***" in record.getMessage()


def test_scopes_in_the_cli_match_the_model() -> None:
    assert tuple(SCOPES) == tuple(scope.value for scope in TokenScope)
    assert TokenScope.admin.covers(TokenScope.write) and TokenScope.write.covers(TokenScope.search)
    assert not TokenScope.search.covers(TokenScope.write)


async def test_auth_off_serves_loopback_only(
    make_db: Callable[[], str], stub: OpenAIStub, nats_url: str
) -> None:
    settings = settings_for(make_db(), stub, nats_url, auth_enabled=False, api_host="0.0.0.0")
    with pytest.raises(ConfigurationError, match="AUTH_ENABLED=false.*Fix:"):
        create_app(settings)
    for host in ("0.0.0.0", "192.168.1.10", "example.com", "::"):
        with pytest.raises(ConfigurationError):
            create_app(settings, host=host)
    loopback = settings.model_copy(update={"api_host": "127.0.0.1"})
    for base_url, expected in (("http://127.0.0.1", 200), ("http://10.0.0.5", 401)):
        # The address a request arrived on: a server bound some other way still asks for tokens
        # (the Host header is a loopback name, so only the address decides).
        opened = await open_api(loopback, base_url)
        try:
            response = await opened.client.get("/api/v1/messages", headers={"Host": "localhost"})
            assert response.status_code == expected, response.text
        finally:
            await opened.client.aclose()
            await opened.state.close()


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "10.0.0.5", ""]
)
async def test_auth_off_refuses_other_host_headers(
    make_db: Callable[[], str], stub: OpenAIStub, nats_url: str, host: str
) -> None:
    """DNS rebinding: a page at evil.example whose name now points at 127.0.0.1 is refused."""
    settings = settings_for(make_db(), stub, nats_url, auth_enabled=False, api_host="127.0.0.1")
    opened = await open_api(settings, "http://127.0.0.1")
    try:
        for path in ("/api/v1/messages", "/api/v1/providers", "/docs", "/api/v1/health/live"):
            response = await opened.client.get(path, headers={"Host": host})
            assert response.status_code == 400, (path, response.text)
            assert response.json()["detail"][0]["field"] == "Host"
            assert "localhost, 127.0.0.1 and [::1]" in response.json()["error"]
        for allowed in ("localhost", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST"):
            response = await opened.client.get("/api/v1/messages", headers={"Host": allowed})
            assert response.status_code == 200, (allowed, response.text)
    finally:
        await opened.client.aclose()
        await opened.state.close()


async def test_auth_on_accepts_any_host_header(api: Api) -> None:
    """With tokens the Host header is not the guard: a proxy may use any name."""
    token = await api.token(TokenScope.search)
    response = await api.client.get(
        "/api/v1/messages", headers={"Host": "evil.example", "Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.text


def test_uvicorn_refuses_a_public_host_when_auth_is_off(tmp_path: Path) -> None:
    """The real start path: API_HOST says loopback, uvicorn's --host says otherwise: refused."""
    port = free_port()
    env = {
        "AUTH_ENABLED": "false",
        "API_HOST": "127.0.0.1",
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        "NATS_URL": "nats://127.0.0.1:1",
        "DATA_DIR": str(tmp_path),
    }
    child = api_child(env, "0.0.0.0", port)
    result = subprocess.run(
        list(child.argv),
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "refuses to start" in result.stderr and "Fix:" in result.stderr
    assert "Traceback" not in result.stderr


def test_uvicorn_serves_without_tokens_on_loopback_when_auth_is_off(
    make_db: Callable[[], str], nats_url: str, tmp_path: Path
) -> None:
    """The control: the same start path on 127.0.0.1 starts, and answers without a token."""
    port = free_port()
    env = {
        "AUTH_ENABLED": "false",
        "DATABASE_URL": make_db(),
        "NATS_URL": nats_url,
        "NATS_STREAM": f"auth{uuid.uuid4().hex[:8]}",
        "DATA_DIR": str(tmp_path),
    }
    child = api_child(env, "127.0.0.1", port, "--log-level", "warning")
    child.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.exited() is None:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/api/v1/messages", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            pytest.fail(f"the API did not start (exit code {child.exited()})")
        assert response.status_code == 200, response.text
    finally:
        stop_all([child])


async def test_last_used_at_is_written_at_most_once_a_minute(api: Api) -> None:
    """Requests within a minute of the last write leave the row untouched (same xmin)."""
    token = await api.token(TokenScope.search)
    sql = text("SELECT last_used_at, xmin::text FROM api_tokens WHERE prefix = :p")

    async def row() -> tuple[object, str]:
        async with api.state.engine.connect() as conn:
            found = (await conn.execute(sql, {"p": token[3:11]})).one()
        return found[0], found[1]

    assert (await row())[0] is None
    assert (await api.call("GET", "/api/v1/messages", token)).status_code == 200
    first = await row()
    assert first[0] is not None
    for _ in range(5):
        assert (await api.call("GET", "/api/v1/messages", token)).status_code == 200
    assert await row() == first, "no UPDATE within the minute"
    async with api.state.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE api_tokens SET last_used_at = last_used_at - interval '61 seconds' "
                "WHERE prefix = :p"
            ),
            {"p": token[3:11]},
        )
    aged = await row()
    assert (await api.call("GET", "/api/v1/messages", token)).status_code == 200
    renewed = await row()
    assert renewed[0] > aged[0] and renewed[1] != aged[1]  # type: ignore[operator]
