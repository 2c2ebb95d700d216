"""The console's HTTP contract in-process: sign-in, cookie, CSRF, scopes, no external assets,
and /metrics access settings. (The flows in a real browser: tests/browser/test_console.py.)"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from app.api.state import AppState
from app.auth import token_service
from app.core.config import Settings
from app.core.urls import to_libpq_url
from app.models.api_token import TokenScope
from testkit.stubs.openai_stub import OpenAIStub
from tests.apps import app_with_state, mint_token, stub_settings

KEY = "sk-console-test-secret-123456"


@dataclass
class Console:
    client: httpx.AsyncClient
    state: AppState

    async def token(self, scope: TokenScope) -> str:
        return await mint_token(self.state, scope, f"console {scope}")

    async def login_form(self) -> tuple[str, str]:
        """(the form's CSRF value, the CSRF cookie) of a fresh sign-in page."""
        self.client.cookies.clear()  # the tests send their cookies themselves
        page = await self.client.get("/console/login")
        assert page.status_code == 200
        field = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert field is not None
        return field.group(1), cookies_of(page)["tt_console_csrf"].value

    async def sign_in(self, token: str) -> str:
        """The session cookie's value after a successful sign-in."""
        csrf, cookie = await self.login_form()
        response = await self.client.post(
            "/console/login",
            data={"csrf": csrf, "token": token},
            headers={"Cookie": f"tt_console_csrf={cookie}"},
        )
        assert response.status_code == 303, response.text
        self.client.cookies.clear()
        return cookies_of(response)["tt_console"].value


def cookies_of(response: httpx.Response) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.get_list("set-cookie"):
        jar.load(header)
    return jar


@pytest.fixture(scope="module")
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(dims=384, api_key=KEY) as server:
        yield server


def console_settings(url: str, stub: OpenAIStub, nats_url: str, **extra: object) -> Settings:
    return stub_settings(url, stub, nats_url, key=KEY, stream="console", **extra)


async def open_console(settings: Settings) -> Console:
    app, state = app_with_state(settings)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    return Console(client, state)


@pytest.fixture
async def console(
    make_db: Callable[[], str], stub: OpenAIStub, nats_url: str
) -> AsyncIterator[Console]:
    opened = await open_console(console_settings(make_db(), stub, nats_url))
    yield opened
    await opened.client.aclose()
    await opened.state.close()


async def test_without_a_token_every_page_sends_to_the_sign_in(console: Console) -> None:
    for path in ("/console", "/console/search?q=x"):
        response = await console.client.get(path)
        assert response.status_code == 303 and response.headers["location"] == "/console/login"
    assert (await console.client.get("/console/panels")).status_code == 401
    retry = await console.client.post("/console/retry", data={"entity": "messages"})
    assert retry.status_code == 303 and retry.headers["location"] == "/console/login"
    forged = await console.client.get("/console", headers={"Cookie": "tt_console=tt_" + "A" * 43})
    assert forged.status_code == 303


async def test_sign_in_keeps_the_token_in_an_httponly_strict_cookie(console: Console) -> None:
    token = await console.token(TokenScope.write)
    csrf, cookie = await console.login_form()
    no_csrf = await console.client.post("/console/login", data={"token": token})
    assert no_csrf.status_code == 403 and "tt_console=" not in no_csrf.headers.get("set-cookie", "")
    wrong = await console.client.post(
        "/console/login",
        data={"csrf": csrf, "token": "tt_" + "B" * 43},
        headers={"Cookie": f"tt_console_csrf={cookie}"},
    )
    assert wrong.status_code == 401 and "not valid" in wrong.text
    assert "tt_console=" not in wrong.headers.get("set-cookie", "")

    right = await console.client.post(
        "/console/login",
        data={"csrf": csrf, "token": token},
        headers={"Cookie": f"tt_console_csrf={cookie}"},
    )
    assert right.status_code == 303 and right.headers["location"] == "/console"
    session = cookies_of(right)["tt_console"]
    assert session.value == token
    assert session["httponly"] is True and session["samesite"].lower() == "strict"
    assert session["path"] == "/console"
    assert token not in right.headers["location"]

    page = await console.client.get("/console", headers={"Cookie": f"tt_console={token}"})
    assert page.status_code == 200
    assert "Coverage" in page.text and "HNSW indexes" in page.text and "Queue" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert token not in page.text  # the page carries a CSRF value derived from it, not it


async def test_pages_load_nothing_from_another_origin(console: Console) -> None:
    token = await console.token(TokenScope.search)
    cookie = {"Cookie": f"tt_console={await console.sign_in(token)}"}
    for path in ("/console", "/console/search?q=deploy", "/console/login"):
        page = await console.client.get(path, headers=cookie)
        assert page.status_code in (200, 303), (path, page.status_code)
        for link in re.findall(r'(?:src|href|action)="([^"]*)"', page.text):
            assert link.startswith(("/console", "#")), (path, link)
    for asset, kind in (("console.css", "text/css"), ("console.js", "javascript")):
        response = await console.client.get(f"/console/static/{asset}")
        assert response.status_code == 200 and kind in response.headers["content-type"]


async def test_retry_needs_the_csrf_value_and_a_write_token(console: Console) -> None:
    search_token, write_token = (
        await console.token(TokenScope.search),
        await console.token(TokenScope.write),
    )
    form = {"entity": "messages", "id": str(uuid.uuid4())}
    for token in (search_token, write_token):
        cookie = {"Cookie": f"tt_console={await console.sign_in(token)}"}
        bare = await console.client.post("/console/retry", data=form, headers=cookie)
        assert bare.status_code == 403 and "expired" in bare.text
        forged = await console.client.post(
            "/console/retry", data={**form, "csrf": "0" * 64}, headers=cookie
        )
        assert forged.status_code == 403
    page = await console.client.get("/console", headers={"Cookie": f"tt_console={search_token}"})
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    cookie = {"Cookie": f"tt_console={search_token}"}
    refused = await console.client.post(
        "/console/retry", data={**form, "csrf": csrf.group(1)}, headers=cookie
    )
    assert refused.status_code == 403 and "scope write" in refused.text
    bad_entity = await console.client.get(
        "/console", headers={"Cookie": f"tt_console={write_token}"}
    )
    write_csrf = re.search(r'name="csrf" value="([^"]+)"', bad_entity.text)
    assert write_csrf is not None
    wrong = await console.client.post(
        "/console/retry",
        data={"entity": "users", "csrf": write_csrf.group(1)},
        headers={"Cookie": f"tt_console={write_token}"},
    )
    assert wrong.status_code == 422 and "entity" in wrong.text
    done = await console.client.post(
        "/console/retry",
        data={**form, "csrf": write_csrf.group(1)},
        headers={"Cookie": f"tt_console={write_token}"},
    )
    assert done.status_code == 303 and done.headers["location"].startswith("/console?retried=0")


async def test_a_revoked_token_is_signed_out(console: Console) -> None:
    token = await console.token(TokenScope.write)
    cookie = {"Cookie": f"tt_console={await console.sign_in(token)}"}
    assert (await console.client.get("/console", headers=cookie)).status_code == 200
    async with console.state.sessions() as session:
        await token_service.revoke_token(session, token[:11])  # tt_ + the prefix
        await session.commit()
    assert (await console.client.get("/console", headers=cookie)).status_code == 303


async def test_bad_search_input_is_a_422_naming_the_field(console: Console) -> None:
    token = await console.token(TokenScope.search)
    cookie = {"Cookie": f"tt_console={token}"}
    long = await console.client.get("/console/search", params={"q": "x" * 2001}, headers=cookie)
    assert long.status_code == 422 and "query" in long.text
    similar = await console.client.get(
        "/console/search", params={"similar": "not-an-id"}, headers=cookie
    )
    assert similar.status_code == 422 and "not an id" in similar.text


@pytest.mark.parametrize("mode", ["metrics_token", "metrics_open"])
async def test_metrics_access_is_configurable(
    make_db: Callable[[], str], stub: OpenAIStub, nats_url: str, mode: str
) -> None:
    secret = "scrape-" + uuid.uuid4().hex
    extra: dict[str, object] = (
        {"metrics_token": secret} if mode == "metrics_token" else {"metrics_open": True}
    )
    opened = await open_console(console_settings(make_db(), stub, nats_url, **extra))
    try:
        api_token = await opened.token(TokenScope.admin)
        anonymous = await opened.client.get("/metrics")
        with_api_token = await opened.client.get(
            "/metrics", headers={"Authorization": f"Bearer {api_token}"}
        )
        with_secret = await opened.client.get(
            "/metrics", headers={"Authorization": f"Bearer {secret}"}
        )
        if mode == "metrics_token":
            assert anonymous.status_code == 401 and with_api_token.status_code == 401
            assert with_secret.status_code == 200 and "tasktracker_rows" in with_secret.text
        else:
            assert anonymous.status_code == 200 and "tasktracker_rows{" in anonymous.text
    finally:
        await opened.client.aclose()
        await opened.state.close()


async def test_a_model_switch_shows_coverage_per_model(console: Console) -> None:
    """Rows embedded by an older model count as stale, and the panel lists both models."""
    async with console.state.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO messages (id, author, channel, content, sent_at, embedding, "
                "embedding_model, embedding_content_hash, embedded_at) "
                "SELECT gen_random_uuid(), 'a', 'c', 'switch ' || g, now(), "
                "array_fill(0.05, ARRAY[384])::vector, CASE WHEN g <= 3 THEN 'old-model' "
                "ELSE 'text-embedding-3-small' END, NULL, now() FROM generate_series(1, 5) g"
            )
        )
        await conn.execute(text("UPDATE messages SET embedding_content_hash = content_hash"))
    token = await console.token(TokenScope.search)
    page = await console.client.get("/console", headers={"Cookie": f"tt_console={token}"})
    assert page.status_code == 200
    assert "<code>old-model</code>: 3 rows" in page.text
    assert "<code>text-embedding-3-small</code>: 2 rows (current)" in page.text
    assert "2 / 5" in page.text  # current for the provider's model, of all rows


async def test_the_index_panel_shows_a_build_running_now(console: Console, tmp_path: Path) -> None:
    """`tasktracker index rebuild` waits for an open writer: the panel shows that phase live."""
    url = console.state.settings.database_url
    assert url is not None
    writer = await asyncpg.connect(to_libpq_url(url))
    transaction = writer.transaction()
    await transaction.start()
    await writer.execute(
        "INSERT INTO messages (id, author, channel, content, sent_at) "
        "VALUES (gen_random_uuid(), 'w', 'c', 'a writer the build waits for', now())"
    )
    rebuild = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "index", "rebuild", "--entity", "messages"],
        env={**os.environ, "DATABASE_URL": url, "DATA_DIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    cookie = {"Cookie": f"tt_console={await console.token(TokenScope.search)}"}
    try:
        deadline = time.monotonic() + 120
        while True:
            panels = await console.client.get("/console/panels", headers=cookie)
            assert panels.status_code == 200
            if "waiting for writers before build" in panels.text:
                break
            assert rebuild.poll() is None and time.monotonic() < deadline, panels.text
            await asyncio.sleep(0.2)
        await transaction.commit()
        _, stderr = rebuild.communicate(timeout=300)
    finally:
        if rebuild.poll() is None:
            rebuild.kill()
            rebuild.wait()
        await writer.close()
    assert rebuild.returncode == 0, stderr
    after = await console.client.get("/console/panels", headers=cookie)
    assert "waiting for writers" not in after.text and "idle" in after.text
    assert "REINDEX CONCURRENTLY" in after.text  # the last build's note, now this one


async def test_retry_all_gives_every_failed_row_fresh_attempts(console: Console) -> None:
    """Without a broker (this app never opened one) the rows still get their attempts back:
    they stay pending for the sweeper, and the notice says none was queued."""
    async with console.state.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO messages (id, author, channel, content, sent_at, embedding_error, "
                "embedding_attempts) SELECT gen_random_uuid(), 'a', 'c', 'parked ' || g, now(), "
                "'HTTP 400: input rejected', 3 FROM generate_series(1, 2) g"
            )
        )
    token = await console.token(TokenScope.write)
    cookie = {"Cookie": f"tt_console={token}"}
    page = await console.client.get("/console", headers=cookie)
    assert page.text.count('class="failed-row"') == 2 and "HTTP 400: input rejected" in page.text
    assert "Retry all failed messages" in page.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf is not None
    done = await console.client.post(
        "/console/retry", data={"entity": "messages", "csrf": csrf.group(1)}, headers=cookie
    )
    assert (
        done.status_code == 303 and done.headers["location"] == "/console?retried=2&queued=0#failed"
    )
    async with console.state.engine.connect() as conn:
        attempts = (
            await conn.execute(text("SELECT max(embedding_attempts) FROM messages"))
        ).scalar()
    assert attempts == 0
    notice = await console.client.get(done.headers["location"], headers=cookie)
    assert "2 rows get fresh attempts; 0 queued for embedding." in notice.text
    assert 'id="no-failed"' in notice.text


async def test_atom_search_takes_type_filters_and_names_a_bad_one(console: Console) -> None:
    cookie = {"Cookie": f"tt_console={await console.token(TokenScope.search)}"}
    params = [("entity", "atoms"), ("q", "deploy"), ("types", "problem"), ("types", "risk")]
    page = await console.client.get("/console/search", params=params, headers=cookie)
    assert page.status_code == 200 and "No results." in page.text
    assert 'value="problem" checked' in page.text and 'value="risk" checked' in page.text
    bad = await console.client.get(
        "/console/search", params=[*params, ("types", "gossip")], headers=cookie
    )
    assert bad.status_code == 422 and "types" in bad.text
