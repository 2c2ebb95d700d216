"""What attackers and broken clients send, through the real app and database: each gets a 4xx
that names the problem, never a 5xx, and the database holds nothing half-written. Also the
limits themselves: body size (413), per-token rate limits (429) and the pool timeout (503).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import text

from app.api.limits import RateLimiter, RouteGroup
from app.api.state import AppState
from app.core.config import Settings
from app.core.embedded import free_port
from app.main import create_app
from app.models.api_token import TokenScope
from testkit.stubs.openai_stub import OpenAIStub
from tests.apps import app_with_state, mint_token, stub_settings

KEY = "sk-hostile-test-secret-123456"
MIB = 1024 * 1024
MESSAGE = {"author": "olena.k", "channel": "backend", "content": "deploy broke checkout"}


@dataclass
class Api:
    app: FastAPI
    client: httpx.AsyncClient
    state: AppState

    async def token(self, scope: TokenScope = TokenScope.admin) -> str:
        return await mint_token(self.state, scope, f"hostile {scope}")

    async def rows(self, table: str = "messages") -> int:
        async with self.state.engine.connect() as conn:
            return int((await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one())


@pytest.fixture(scope="module")
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(dims=384, api_key=KEY) as server:
        yield server


@pytest.fixture
def settings_for(
    make_db: Callable[[], str], stub: OpenAIStub, nats_url: str
) -> Callable[..., Settings]:
    def make(**extra: Any) -> Settings:
        return stub_settings(make_db(), stub, nats_url, key=KEY, stream="hostile", **extra)

    return make


@asynccontextmanager
async def open_api(
    settings: Settings, *, client: tuple[str, int] = ("127.0.0.1", 123)
) -> AsyncIterator[Api]:
    app, state = app_with_state(settings)
    transport = httpx.ASGITransport(app=app, client=client)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        opened = Api(app, http, state)
        try:
            yield opened
        finally:
            await state.close()


@pytest.fixture
async def api(settings_for: Callable[..., Settings]) -> AsyncIterator[Api]:
    async with open_api(settings_for()) as opened:
        opened.client.headers["Authorization"] = f"Bearer {await opened.token()}"
        yield opened


def refused(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    """The response is `status` in the API's error shape, and its text names every word."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    said = json.dumps(body)
    for word in words:
        assert word in said, (word, said[:500])
    return dict(body)


async def test_oversized_bodies_get_413_before_they_are_read(api: Api) -> None:
    big = {**MESSAGE, "content": "x" * (2 * MIB)}
    body = refused(await api.client.post("/api/v1/messages", json=big), 413, "MAX_BODY_BYTES")
    assert body["detail"] == {"max_bytes": MIB} and str(MIB) in body["error"]
    # Refused on its Content-Length, before auth looks at the (missing) token.
    anonymous = await api.client.post("/api/v1/messages", json=big, headers={"Authorization": ""})
    refused(anonymous, 413, "MAX_BODY_BYTES")

    sent: list[int] = []

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"author": "a", "channel": "c", "content": "'
        for _ in range(64):
            sent.append(64 * 1024)
            yield b"y" * (64 * 1024)
        yield b'"}'

    streamed = await api.client.post(
        "/api/v1/messages", content=chunked(), headers={"Content-Type": "application/json"}
    )
    refused(streamed, 413, "MAX_BODY_BYTES")
    assert sum(sent) <= MIB + 2 * 64 * 1024 < 4 * MIB  # stopped reading at the limit
    # Just under the limit is fine; the limit is the body's, not the content's.
    fits = await api.client.post("/api/v1/messages", json={**MESSAGE, "content": "z" * 20_000})
    assert fits.status_code == 201, fits.text
    assert await api.rows() == 1


async def test_oversized_body_on_a_real_server(settings_for: Callable[..., Settings]) -> None:
    """The same over real HTTP: uvicorn with the app, both a Content-Length and a chunked body."""
    app = create_app(settings_for(max_body_bytes=64 * 1024))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/api/v1/messages"
        payload = json.dumps({**MESSAGE, "content": "x" * 200_000}).encode()
        declared = httpx.post(url, content=payload, headers={"Content-Type": "application/json"})
        refused(declared, 413, "65536 bytes")
        pieces = (payload[i : i + 8192] for i in range(0, len(payload), 8192))
        streamed = httpx.post(url, content=pieces, headers={"Content-Type": "application/json"})
        refused(streamed, 413, "65536 bytes")
    finally:
        server.should_exit = True
        thread.join(10)


async def test_long_queries_and_fields_are_422_naming_the_field(api: Api) -> None:
    query = "q" * 100_000
    search = await api.client.post("/api/v1/semantic_search/messages", json={"query": query})
    refused(search, 422, "body.query", "at most 2000 characters")
    # httpx caps a URL at 64 KiB (and a real server's request line far lower: a 4xx of its own).
    listing = await api.client.get("/api/v1/messages", params={"channel": "c" * 60_000})
    refused(listing, 422, "query.channel", "at most 100 characters")
    long_author = {**MESSAGE, "author": "a" * 201}
    refused(await api.client.post("/api/v1/messages", json=long_author), 422, "body.author")
    long_content = {**MESSAGE, "content": "c" * 20_001}
    refused(
        await api.client.post("/api/v1/messages", json=long_content),
        422,
        "body.content",
        "at most 20000 characters",
    )
    assert await api.rows() == 0


async def test_nul_invalid_utf8_and_surrogates_are_422_and_store_nothing(api: Api) -> None:
    created = await api.client.post("/api/v1/messages", json=MESSAGE)
    assert created.status_code == 201, created.text
    message_id = created.json()["ids"][0]
    post = api.client.post
    nul = "before\x00after"
    json_body = {"Content-Type": "application/json"}
    cases = [
        (await post("/api/v1/messages", json={**MESSAGE, "content": nul}), "body.content", "NUL"),
        (await post("/api/v1/messages", json={**MESSAGE, "author": nul}), "body.author", "NUL"),
        (
            await post("/api/v1/messages", json={**MESSAGE, "external_id": nul}),
            "body.external_id",
            "NUL",
        ),
        (
            # One bad message refuses the whole batch: the good ones are not stored either.
            await post(
                "/api/v1/messages/batch",
                json={"messages": [MESSAGE, MESSAGE, {**MESSAGE, "content": nul}]},
            ),
            "body.messages.2.content",
            "NUL",
        ),
        (
            await api.client.patch(f"/api/v1/messages/{message_id}", json={"content": nul}),
            "body.content",
            "NUL",
        ),
        (
            await post("/api/v1/semantic_search/messages", json={"query": nul}),
            "body.query",
            "NUL",
        ),
        (await api.client.get("/api/v1/messages?channel=a%00b"), "query.channel", "NUL"),
        (
            # Bytes that are not UTF-8 at all.
            await post(
                "/api/v1/messages",
                content=b'{"author": "a", "channel": "c", "content": "caf\xe9 \xff\xfe"}',
                headers=json_body,
            ),
            "body",
            "not valid UTF-8 (byte 47)",
        ),
        (
            # A lone surrogate: valid JSON escape, not a character UTF-8 can encode.
            await post(
                "/api/v1/messages",
                content=b'{"author": "a", "channel": "c", "content": "x\\ud800y"}',
                headers=json_body,
            ),
            "body.content",
            "valid string",
        ),
        (
            # A raw NUL byte inside a JSON string: JSON forbids control characters there.
            await post(
                "/api/v1/messages",
                content=b'{"author": "a", "channel": "c", "content": "x\x00y"}',
                headers=json_body,
            ),
            "body",
            "Invalid control character",
        ),
    ]
    for response, field, problem in cases:
        refused(response, 422, field, problem)
    assert await api.rows() == 1
    stored = (await api.client.get(f"/api/v1/messages/{message_id}")).json()
    assert stored["content"] == MESSAGE["content"]  # the refused PATCH changed nothing


async def test_sql_metacharacters_are_just_text(api: Api) -> None:
    """Not an error at all: stored and searched verbatim, and the tables are untouched."""
    hostile = "Robert'); DROP TABLE messages; -- 100% _done_ \\ $1 :param"
    created = await api.client.post("/api/v1/messages", json={**MESSAGE, "content": hostile})
    assert created.status_code == 201, created.text
    message_id = created.json()["ids"][0]
    assert (await api.client.get(f"/api/v1/messages/{message_id}")).json()["content"] == hostile
    for mode in ("vector", "hybrid"):
        for query in (hostile, "' OR 1=1 --", "!(&|:*<->'\"", "%_%"):
            response = await api.client.post(
                "/api/v1/semantic_search/messages", json={"query": query, "mode": mode}
            )
            assert response.status_code == 200, (mode, query, response.text)
    listing = await api.client.get("/api/v1/messages", params={"channel": "' OR ''='"})
    assert listing.status_code == 200 and listing.json()["items"] == []
    everything = await api.client.get("/api/v1/messages", params={"channel": "%"})
    assert everything.status_code == 200 and everything.json()["items"] == []
    assert await api.rows() == 1 and await api.rows("api_tokens") == 1


async def test_malformed_uuids_are_422_naming_the_parameter(api: Api) -> None:
    get, post = api.client.get, api.client.post
    cases = [
        (await get("/api/v1/messages/not-a-uuid"), "path.message_id"),
        (await get("/api/v1/messages/1' OR '1'='1"), "path.message_id"),
        (await get("/api/v1/messages", params={"after": "123"}), "query.after"),
        (await get("/api/v1/semantic_search/messages/xyz/similar"), "path.message_id"),
        (await post("/api/v1/embeddings/messages/%00"), "path.message_id"),
        (await post("/api/v1/embeddings/messages/batch", json={"ids": ["nope"]}), "body.ids.0"),
        (
            await post("/api/v1/knowledge/extract", json={"message_ids": [str(uuid.uuid4()), 7]}),
            "body.message_ids.1",
        ),
        (
            await post("/api/v1/semantic_search/atoms", json={"query": "q", "topic_id": "t"}),
            "body.topic_id",
        ),
    ]
    for response, field in cases:
        refused(response, 422, field, "UUID")


async def test_negative_huge_and_odd_limits_are_422(api: Api) -> None:
    search = "/api/v1/semantic_search/messages"
    for body, field in [
        ({"query": "q", "limit": -1}, "body.limit"),
        ({"query": "q", "limit": 0}, "body.limit"),
        ({"query": "q", "limit": 101}, "body.limit"),
        ({"query": "q", "limit": 10**30}, "body.limit"),
        ({"query": "q", "limit": "ten"}, "body.limit"),
        ({"query": "q", "limit": 1.5}, "body.limit"),
        ({"query": "q", "offset": -1}, "body.offset"),
        ({"query": "q", "offset": 10**9}, "body.offset"),
        ({"query": "q", "threshold": 2}, "body.threshold"),
    ]:
        refused(await api.client.post(search, json=body), 422, field)
    similar = f"/api/v1/semantic_search/messages/{uuid.uuid4()}/similar"
    for path, value in [
        ("/api/v1/messages", "-5"),
        ("/api/v1/messages", "0"),
        ("/api/v1/messages", "501"),
        ("/api/v1/messages", "99999999999999999999999999"),
        ("/api/v1/messages", "1e3"),
        (similar, "-1"),
        (similar, "1000"),
    ]:
        refused(await api.client.get(path, params={"limit": value}), 422, "query.limit")


async def test_batch_sizes_are_bounded(api: Api) -> None:
    post = api.client.post
    ids = [str(uuid.uuid4()) for _ in range(10_001)]
    cases = [
        (
            await post("/api/v1/messages/batch", json={"messages": [MESSAGE] * 1001}),
            "body.messages",
            "at most 1000 items",
        ),
        (await post("/api/v1/messages/batch", json={"messages": []}), "body.messages", "at least"),
        (
            await post("/api/v1/embeddings/messages/batch", json={"ids": ids}),
            "body.ids",
            "at most 10000 items",
        ),
        (
            await post("/api/v1/knowledge/extract", json={"message_ids": ids[:5001]}),
            "body.message_ids",
            "at most 5000 items",
        ),
        (
            await post("/api/v1/knowledge/extract", json={"all_pending": True, "window": 0}),
            "body.window",
            "greater than or equal to 1",
        ),
        (
            await post(
                "/api/v1/semantic_search/atoms", json={"query": "q", "types": ["fact"] * 10}
            ),
            "body.types",
            "",
        ),
    ]
    for response, field, problem in cases:
        refused(response, 422, field, problem)
    assert await api.rows() == 0


async def test_unknown_fields_are_422_naming_them(api: Api) -> None:
    post = api.client.post
    cases = [
        (await post("/api/v1/messages", json={**MESSAGE, "id": str(uuid.uuid4())}), "body.id"),
        (
            await post("/api/v1/messages/batch", json={"messages": [{**MESSAGE, "admin": True}]}),
            "body.messages.0.admin",
        ),
        (
            await post("/api/v1/semantic_search/messages", json={"query": "q", "sql": "1=1"}),
            "body.sql",
        ),
        (
            await api.client.patch(
                f"/api/v1/messages/{uuid.uuid4()}", json={"embedding": [0.1] * 384}
            ),
            "body.embedding",
        ),
        (await post("/api/v1/embeddings/messages/batch", json={"ids": [], "x": 1}), "body.x"),
    ]
    for response, field in cases:
        refused(response, 422, field, "Extra inputs are not permitted")
    assert await api.rows() == 0


async def test_deeply_nested_json_is_422_and_stores_nothing(api: Api) -> None:
    post = api.client.post
    json_body = {"Content-Type": "application/json"}
    deep = 100_000
    arrays = b"[" * deep + b"]" * deep
    objects = (
        b'{"author": "a", "channel": "c", "content": '
        + b'{"a": ' * deep
        + b"1"
        + b"}" * deep
        + b"}"
    )
    for body in (arrays, objects):
        response = await post("/api/v1/messages", content=body, headers=json_body)
        refused(response, 422, "nested too deeply")
    # Shallower than the parser's limit: parsed, then refused by the model.
    nested: Any = "x"
    for _ in range(500):
        nested = [nested]
    refused(
        await post("/api/v1/messages", json={**MESSAGE, "content": nested}), 422, "body.content"
    )
    refused(
        await post("/api/v1/semantic_search/messages", json={"query": "q", "mode": nested}),
        422,
        "body.mode",
    )
    assert await api.rows() == 0


async def test_rate_limit_per_token_and_group(settings_for: Callable[..., Settings]) -> None:
    settings = settings_for(rate_limit_search_per_minute=3, rate_limit_embed_now_per_minute=2)
    async with open_api(settings) as api:
        first, second = await api.token(TokenScope.write), await api.token(TokenScope.search)

        async def search(token: str) -> httpx.Response:
            return await api.client.post(
                "/api/v1/semantic_search/messages",
                json={"query": "checkout", "limit": 5},
                headers={"Authorization": f"Bearer {token}"},
            )

        for _ in range(3):
            assert (await search(first)).status_code == 200
        limited = await search(first)
        body = refused(limited, 429, "3 search requests a minute", "retry in")
        retry_after = int(limited.headers["Retry-After"])
        assert 1 <= retry_after <= 20 and body["detail"]["retry_after_seconds"] == retry_after
        # The similar-items routes are searches too; other routes and other tokens are not held.
        similar = await api.client.get(
            f"/api/v1/semantic_search/messages/{uuid.uuid4()}/similar",
            headers={"Authorization": f"Bearer {first}"},
        )
        refused(similar, 429, "search")
        listing = await api.client.get(
            "/api/v1/messages", headers={"Authorization": f"Bearer {first}"}
        )
        assert listing.status_code == 200
        assert (await search(second)).status_code == 200
        # Requests without a valid token get their 401 and take nothing from anyone's bucket.
        for _ in range(5):
            assert (await search("tt_" + "A" * 43)).status_code == 401
        assert (await search(second)).status_code == 200

        embed = f"/api/v1/embeddings/messages/{uuid.uuid4()}"
        headers = {"Authorization": f"Bearer {first}"}
        for _ in range(2):  # the route runs (404: no such message), and counts
            refused(await api.client.post(embed, headers=headers), 404, "not found")
        refused(await api.client.post(embed, headers=headers), 429, "2 embed_now requests")


async def test_rate_limit_with_auth_off_is_per_client_address(
    settings_for: Callable[..., Settings],
) -> None:
    settings = settings_for(auth_enabled=False, rate_limit_search_per_minute=1)
    query = {"query": "checkout"}
    path = "/api/v1/semantic_search/messages"
    async with open_api(settings, client=("127.0.0.1", 1)) as one:
        assert (await one.client.post(path, json=query)).status_code == 200
        refused(await one.client.post(path, json=query), 429, "1 search requests")
        other = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=one.app, client=("127.0.0.2", 1)),
            base_url="http://127.0.0.1",
        )
        async with other:
            assert (await other.post(path, json=query)).status_code == 200


def test_token_bucket_refills_at_the_rate() -> None:
    now = [1000.0]
    limiter = RateLimiter({RouteGroup.search: 60, RouteGroup.extract: 0}, clock=lambda: now[0])
    assert [limiter.acquire(RouteGroup.search, "a") for _ in range(60)] == [0.0] * 60
    assert limiter.acquire(RouteGroup.search, "a") == pytest.approx(1.0)
    now[0] += 0.5
    assert limiter.acquire(RouteGroup.search, "a") == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.acquire(RouteGroup.search, "a") == 0.0
    assert limiter.acquire(RouteGroup.search, "b") == 0.0  # another caller has its own bucket
    assert all(limiter.acquire(RouteGroup.extract, "a") == 0.0 for _ in range(1000))  # 0: off
    now[0] += 3600
    # Memory stays bounded: past max_buckets, buckets that have refilled are forgotten.
    small = RateLimiter({RouteGroup.search: 60}, clock=lambda: now[0], max_buckets=2)
    small.acquire(RouteGroup.search, "a")
    small.acquire(RouteGroup.search, "b")
    now[0] += 0.5
    small.acquire(RouteGroup.search, "c")  # a and b are not full yet: kept
    assert len(small._buckets) == 3
    now[0] += 60
    small.acquire(RouteGroup.search, "d")
    assert set(small._buckets) == {("d", RouteGroup.search)}


async def test_a_pool_timeout_is_503_not_a_hang(settings_for: Callable[..., Settings]) -> None:
    settings = settings_for(db_pool_size=1, db_max_overflow=0, db_pool_timeout_seconds=0.5)
    async with open_api(settings) as api:
        token = await api.token(TokenScope.search)
        headers = {"Authorization": f"Bearer {token}"}
        assert (await api.client.get("/api/v1/messages", headers=headers)).status_code == 200
        async with api.state.engine.connect() as held:  # the pool's only connection
            await held.execute(text("SELECT 1"))
            started = time.monotonic()
            response = await api.client.get("/api/v1/messages", headers=headers)
            took = time.monotonic() - started
        refused(response, 503, "database busy")
        assert response.headers["Retry-After"] == "1"
        assert took > 0.4, took  # it waited for the pool (a bound above would race load)
        assert (await api.client.get("/api/v1/messages", headers=headers)).status_code == 200


# Past the ends in UTC, and the ends themselves: asyncpg stores Python's first and last
# microsecond as -infinity/infinity and reads them back naive, which broke ordering by sent_at.
EXTREME_MOMENTS = [
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999Z",
]


@pytest.mark.parametrize("moment", EXTREME_MOMENTS)
async def test_datetimes_past_the_ends_of_time_are_422(api: Api, moment: str) -> None:
    """An offset that pushes a moment past year 1 or 9999 in UTC cannot be stored: 422."""
    created = await api.client.post("/api/v1/messages", json={**MESSAGE, "sent_at": moment})
    refused(created, 422, "body.sent_at", "between 0001-01-01")
    batch = {"messages": [MESSAGE, {**MESSAGE, "sent_at": moment}]}
    refused(await api.client.post("/api/v1/messages/batch", json=batch), 422, "sent_at")
    assert await api.rows() == 0
    for field in ("sent_after", "sent_before"):
        search = await api.client.post(
            "/api/v1/semantic_search/messages", json={"query": "deploy", field: moment}
        )
        refused(search, 422, f"body.{field}", "between 0001-01-01")
    # A second inside either end, in UTC, is fine, and reads back as the same moment.
    for fine in ("0001-01-01T00:00:01Z", "9999-12-31T23:59:59Z", "2024-05-01T10:00:00"):
        stored = await api.client.post("/api/v1/messages", json={**MESSAGE, "sent_at": fine})
        assert stored.status_code == 201, stored.text
        read = await api.client.get(f"/api/v1/messages/{stored.json()['ids'][0]}")
        assert datetime.fromisoformat(read.json()["sent_at"]) == datetime.fromisoformat(
            fine if fine[-1] == "Z" else fine + "Z"
        )


async def provider(api: Api, name: str = "p", **extra: Any) -> dict[str, Any]:
    body = {
        "name": name,
        "type": "openai",
        "base_url": "http://127.0.0.1:9/v1",
        "embedding_model": "text-embedding-3-small",
        "embedding_dimensions": 384,
        **extra,
    }
    created = await api.client.post("/api/v1/providers", json=body)
    assert created.status_code == 201, created.text
    return dict(created.json())


@pytest.mark.parametrize(
    "field", ["embedding_model", "embedding_dimensions", "is_active", "is_default"]
)
async def test_null_for_a_required_provider_field_is_422(api: Api, field: str) -> None:
    row = await provider(api)
    patched = await api.client.patch(f"/api/v1/providers/{row['id']}", json={field: None})
    refused(patched, 422, f"body.{field}", "may not be null")
    listed = (await api.client.get("/api/v1/providers")).json()
    assert listed[0][field] == row[field]  # unchanged
    # Nullable fields may still be cleared.
    cleared = await api.client.patch(f"/api/v1/providers/{row['id']}", json={"chat_model": None})
    assert cleared.status_code == 200, cleared.text


@pytest.mark.parametrize("field", ["author", "channel", "content", "extraction_status"])
async def test_null_for_a_required_message_field_is_422_not_ignored(api: Api, field: str) -> None:
    created = await api.client.post("/api/v1/messages", json=MESSAGE)
    message_id = created.json()["ids"][0]
    patched = await api.client.patch(f"/api/v1/messages/{message_id}", json={field: None})
    refused(patched, 422, f"body.{field}", "may not be null")


async def test_concurrent_defaults_leave_exactly_one(api: Api) -> None:
    """Two providers made default at once: both answered (no 500), one default remains."""
    rows = [await provider(api, f"p{i}") for i in range(4)]
    for _ in range(3):
        answers = await asyncio.gather(
            *(
                api.client.patch(f"/api/v1/providers/{row['id']}", json={"is_default": True})
                for row in rows
            )
        )
        assert [a.status_code for a in answers] == [200] * len(rows), [a.text for a in answers]
        listed = (await api.client.get("/api/v1/providers")).json()
        assert sum(p["is_default"] for p in listed) == 1, listed
    created = await asyncio.gather(
        *(
            api.client.post(
                "/api/v1/providers",
                json={
                    "name": f"new{i}",
                    "type": "openai",
                    "base_url": "http://127.0.0.1:9/v1",
                    # the active space's model: another one is refused (a switch moves to it)
                    "embedding_model": "text-embedding-3-small",
                    "embedding_dimensions": 384,
                    "is_default": True,
                },
            )
            for i in range(4)
        )
    )
    assert [c.status_code for c in created] == [201] * 4, [c.text for c in created]
    listed = (await api.client.get("/api/v1/providers")).json()
    assert sum(p["is_default"] for p in listed) == 1, listed


async def test_concurrent_providers_of_one_name_conflict_with_409(api: Api) -> None:
    """The unique name, raced: one 201, the rest 409 naming the field, never a 500."""
    body = {"name": "same", "type": "local", "embedding_model": "m", "embedding_dimensions": 384}
    answers = await asyncio.gather(
        *(api.client.post("/api/v1/providers", json=body) for _ in range(6))
    )
    codes = sorted(a.status_code for a in answers)
    assert codes == [201] + [409] * 5, [a.text for a in answers]
    for answer in answers:
        if answer.status_code == 409:
            refused(answer, 409, "name")


async def test_a_constraint_violation_is_mapped_to_a_4xx_naming_the_field(api: Api) -> None:
    """The handler's own mapping, on errors Postgres really raises (no route produces them now)."""
    from sqlalchemy.exc import DBAPIError

    from app.api.errors import _database_response

    async def error_of(sql: str) -> DBAPIError:
        async with api.state.engine.connect() as conn:
            try:
                await conn.execute(text(sql))
            except DBAPIError as exc:
                return exc
        raise AssertionError(f"no error from {sql}")

    seed = "INSERT INTO llm_providers (id, name, type, embedding_model, embedding_dimensions"
    values = "VALUES (gen_random_uuid(), 'x', 'local', 'm', 384"
    cases = [
        (
            f"{seed}, is_default) {values}, true), (gen_random_uuid(), 'y', 'local', 'm', 384, true)",
            409,
            "is_default",
        ),
        (f"{seed}) {values}), (gen_random_uuid(), 'x', 'local', 'm', 384)", 409, "name"),
        (f"{seed}) VALUES (gen_random_uuid(), 'z', 'bogus', 'm', 384)", 422, "type"),
        (f"{seed}) VALUES (gen_random_uuid(), 'z', 'local', NULL, 384)", 422, "embedding_model"),
        ("SELECT '10000-01-01'::timestamptz + interval '300000 years'", 422, "body"),
    ]
    for sql, status, field in cases:
        response = _database_response(await error_of(sql))
        assert response.status_code == status, (sql, bytes(response.body))
        body = json.loads(bytes(response.body))
        assert body["detail"][0]["field"] == field, body


async def test_extraction_that_cannot_be_queued_leaves_the_messages_pending(api: Api) -> None:
    """No broker (never started here): the claims are given back, nothing waits as processing."""
    created = await api.client.post("/api/v1/messages/batch", json={"messages": [MESSAGE] * 3})
    assert created.status_code == 201, created.text
    answer = await api.client.post("/api/v1/knowledge/extract", json={"all_pending": True})
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"messages": 3, "tasks": 0, "status": "failed_to_queue"}
    async with api.state.engine.connect() as conn:
        states = (await conn.execute(text("SELECT extraction_status FROM messages"))).scalars()
        assert sorted(states) == ["pending"] * 3


async def test_an_api_key_that_cannot_be_a_header_is_422(api: Api) -> None:
    """Found by the stateful Schemathesis run: a non-ASCII key made /test answer 500."""
    for key in ("sk-ключ-123", "sk-key\n123", " sk-key "):
        created = await api.client.post(
            "/api/v1/providers",
            json={
                "name": "k",
                "type": "ollama",
                "base_url": "http://127.0.0.1:9",
                "api_key": key,
                "embedding_model": "m",
                "embedding_dimensions": 384,
            },
        )
        refused(created, 422, "body.api_key", "printable ASCII")
        assert key not in created.text
    row = await provider(api)
    patched = await api.client.patch(f"/api/v1/providers/{row['id']}", json={"api_key": "ключ"})
    refused(patched, 422, "body.api_key")
