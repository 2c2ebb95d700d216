"""The write routes as users reach them: uvicorn runs the app's lifespan (real NATS broker, a stream
of its own), every write route queues, and a real `tasktracker worker` embeds what it queued.

The worker runs with `--no-sweeper`, so nothing but the routes' own publishes can get a row
embedded: a route that failed to queue would leave its rows NULL and its test would time out.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.auth import token_service
from app.core.embedded import free_port
from app.core.supervisor import Child, api_child, stop_all
from app.core.urls import to_asyncpg_url
from app.models.api_token import TokenScope
from testkit.launchers import WorkerProcess
from testkit.stubs.openai_stub import OpenAIStub

pytestmark = pytest.mark.slow
KEY = "sk-stack-test-secret-123456"
DIMS = 384
MiB = 1024 * 1024


@dataclass
class Stack:
    base_url: str
    engine: AsyncEngine
    stub: OpenAIStub
    tokens: dict[TokenScope, str]
    worker: WorkerProcess
    api: Child

    async def call(
        self, method: str, path: str, scope: TokenScope = TokenScope.write, **kwargs: Any
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[scope]}"}
        async with httpx.AsyncClient(base_url=self.base_url, timeout=60) as client:
            return await client.request(method, f"/api/v1{path}", headers=headers, **kwargs)

    async def scalar(self, sql: str, **params: object) -> Any:
        async with self.engine.connect() as conn:
            return (await conn.execute(text(sql), params)).scalar_one()

    async def wait_for(
        self, what: str, check: Callable[[], Awaitable[bool]], timeout: float = 120.0
    ) -> None:
        """Poll `check` until true; fail with the worker's log once the deadline passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await check():
                return
            await asyncio.sleep(0.2)
        pytest.fail(f"{what}: not after {timeout}s\n{self.worker.output()[-3000:]}")

    async def wait_embedded(self, table: str, where: str, expected: int, **params: object) -> None:
        sql = (
            f"SELECT count(*) FROM {table} WHERE {where} AND embedding IS NOT NULL "
            "AND embedding_content_hash = content_hash"
        )

        async def done() -> bool:
            return int(await self.scalar(sql, **params)) >= expected

        await self.wait_for(f"{expected} {table} embedded where {where}", done)


@pytest.fixture(scope="module")
def stack_stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(dims=DIMS, api_key=KEY) as server:
        yield server


async def _wait_ready(base_url: str, api: Child) -> None:
    deadline = time.monotonic() + 90
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as client:
        while time.monotonic() < deadline and api.exited() is None:
            try:
                if (await client.get("/api/v1/health/ready")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    pytest.fail(f"the API did not become ready (exit code {api.exited()})")


@pytest.fixture(scope="module")
async def stack(
    make_db: Callable[[], str],
    nats_url: str,
    stack_stub: OpenAIStub,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Stack]:
    db_url = make_db()
    tmp: Path = tmp_path_factory.mktemp("stack")
    env = {
        "DATABASE_URL": db_url,
        "NATS_URL": nats_url,
        "NATS_STREAM": f"stack{uuid.uuid4().hex[:8]}",
        "EMBEDDING_PROVIDER": "openai",
        "EMBEDDING_MODEL": "text-embedding-3-small",
        "EMBEDDING_BASE_URL": stack_stub.base_url,
        "EMBEDDING_API_KEY": KEY,
        "EMBEDDING_DIMENSIONS": str(DIMS),
        # One folder for both: the worker decrypts provider keys the API encrypted.
        "DATA_DIR": str(tmp / "data"),
    }
    engine = create_async_engine(to_asyncpg_url(db_url), pool_size=2)
    tokens = {}
    from app.db import session_factory

    async with session_factory(engine)() as session:
        for scope in TokenScope:
            tokens[scope], _ = await token_service.create_token(session, scope, f"stack {scope}")
        await session.commit()
    port = free_port()
    api = api_child(env, "127.0.0.1", port, "--log-level", "warning", "--no-access-log")
    worker = WorkerProcess(env, tmp / "worker.log", ("--no-sweeper",))
    api.start()
    try:
        worker.start()
        base_url = f"http://127.0.0.1:{port}"
        await _wait_ready(base_url, api)
        yield Stack(base_url, engine, stack_stub, tokens, worker, api)
    finally:
        stop_all([api])
        worker.stop()
        await engine.dispose()


def messages(channel: str, count: int, text_of: Callable[[int], str]) -> list[dict[str, str]]:
    return [{"author": "a", "channel": channel, "content": text_of(i)} for i in range(count)]


async def test_readiness_is_200_with_the_database_and_the_broker_up(stack: Stack) -> None:
    """The lifespan connected the broker: readiness says ok for both, without a token."""
    async with httpx.AsyncClient(base_url=stack.base_url) as client:
        ready = await client.get("/api/v1/health/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}


async def test_a_posted_message_is_queued_and_the_worker_makes_it_searchable(stack: Stack) -> None:
    """POST /messages publishes its id; the worker embeds it; search finds it by its own text."""
    channel = f"post-{uuid.uuid4().hex[:6]}"
    content = f"the checkout deploy in {channel} broke payments"
    created = await stack.call(
        "POST", "/messages", json={"author": "a", "channel": channel, "content": content}
    )
    assert created.status_code == 201, created.text
    assert created.json()["embedding"] == "queued"
    (message_id,) = created.json()["ids"]
    queued_at = await stack.scalar(
        "SELECT embedding_queued_at FROM messages WHERE id = :id", id=uuid.UUID(message_id)
    )
    assert queued_at is not None, "the route marked the row as published"

    async def current() -> bool:
        got = await stack.call("GET", f"/messages/{message_id}", TokenScope.search)
        return bool(got.json()["embedding_current"])

    await stack.wait_for("the posted message embedded", current)
    found = await stack.call(
        "POST",
        "/semantic_search/messages",
        TokenScope.search,
        json={"query": content, "limit": 3, "channel": channel},
    )
    top = found.json()["results"][0]
    assert top["id"] == message_id and top["similarity"] == pytest.approx(1.0, abs=1e-5)


async def test_an_import_of_1000_messages_under_1_mib_is_accepted_queued_and_embedded(
    stack: Stack,
) -> None:
    """The batch route takes 1,000 messages in a body just under the 1 MiB limit, in one call."""
    channel = f"bulk-{uuid.uuid4().hex[:6]}"
    filler = "x" * 900
    body = {"messages": messages(channel, 1000, lambda i: f"bulk {i} {filler}")}
    size = len(json.dumps(body).encode())
    assert 0.9 * MiB < size < MiB, size
    created = await stack.call("POST", "/messages/batch", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["created"] == 1000 and created.json()["embedding"] == "queued"
    await stack.wait_embedded("messages", "channel = :c", 1000, c=channel)

    over = {"messages": messages(channel, 1001, lambda i: f"over {i}")}
    refused = await stack.call("POST", "/messages/batch", json=over)
    assert refused.status_code == 422 and "messages" in refused.json()["error"]


async def test_a_write_token_may_patch_and_new_content_is_reembedded(stack: Stack) -> None:
    """PATCH with new content queues the row again; the worker embeds the new text."""
    channel = f"patch-{uuid.uuid4().hex[:6]}"
    body = {"author": "a", "channel": channel, "content": f"first words in {channel}"}
    (message_id,) = (await stack.call("POST", "/messages", json=body)).json()["ids"]
    await stack.wait_embedded("messages", "channel = :c", 1, c=channel)

    new = f"completely different words about invoices in {channel}"
    patched = await stack.call("PATCH", f"/messages/{message_id}", json={"content": new})
    assert patched.status_code == 200, patched.text
    assert patched.json()["embedding_current"] is False
    await stack.wait_embedded("messages", "channel = :c", 1, c=channel)
    assert stack.stub.stats()["text_counts"].get(new) == 1, "the new text embedded once"
    found = await stack.call(
        "POST",
        "/semantic_search/messages",
        TokenScope.search,
        json={"query": new, "limit": 1, "channel": channel},
    )
    assert found.json()["results"][0]["similarity"] == pytest.approx(1.0, abs=1e-5)


async def test_a_write_token_may_queue_listed_ids_and_the_worker_embeds_them(
    stack: Stack,
) -> None:
    """Rows written past the API (never queued) are queued by id; a second call skips them."""
    channel = f"ids-{uuid.uuid4().hex[:6]}"
    async with stack.engine.begin() as conn:
        rows = await conn.execute(
            text(
                "INSERT INTO messages (id, author, channel, content, sent_at) SELECT "
                "gen_random_uuid(), 'a', :c, :c || ' row ' || g, now() "
                "FROM generate_series(1, 20) g RETURNING id"
            ),
            {"c": channel},
        )
        ids = [str(i) for i in rows.scalars()]
    queued = await stack.call("POST", "/embeddings/messages/batch", json={"ids": ids})
    assert queued.status_code == 200, queued.text
    assert queued.json() == {"queued": 20, "failed_to_queue": 0, "skipped": 0}
    await stack.wait_embedded("messages", "channel = :c", 20, c=channel)
    again = await stack.call("POST", "/embeddings/messages/batch", json={"ids": ids})
    assert again.json() == {"queued": 0, "failed_to_queue": 0, "skipped": 20}


async def _insert_atoms(stack: Stack, tag: str, types: list[str]) -> list[str]:
    async with stack.engine.begin() as conn:
        rows = await conn.execute(
            text(
                "INSERT INTO atoms (id, type, title, content, confidence, fingerprint) "
                "SELECT gen_random_uuid(), t, :tag || ' atom ' || n, :tag || ' ' || t || ' number '"
                " || n, 0.7, :tag || n FROM unnest(CAST(:types AS text[])) WITH ORDINALITY u(t, n) "
                "RETURNING id"
            ),
            {"tag": tag, "types": types},
        )
        return [str(i) for i in rows.scalars()]


async def test_backfill_over_the_api_is_admin_only_and_the_worker_drains_it(stack: Stack) -> None:
    """all_missing: a write token gets a 403 naming admin (insufficient_scope); admin queues all."""
    tag = f"missing-{uuid.uuid4().hex[:6]}"
    ids = await _insert_atoms(stack, tag, ["problem", "solution", "decision"])
    refused = await stack.call("POST", "/embeddings/atoms/batch", json={"all_missing": True})
    assert refused.status_code == 403
    assert refused.json()["error"] == (
        "this token's scope (write) does not allow this request; it needs admin"
    )
    assert refused.headers["www-authenticate"] == (
        'Bearer error="insufficient_scope", scope="admin"'
    )
    allowed = await stack.call(
        "POST", "/embeddings/atoms/batch", TokenScope.admin, json={"all_missing": True}
    )
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["queued"] >= len(ids) and allowed.json()["failed_to_queue"] == 0
    await stack.wait_embedded("atoms", "id = ANY(CAST(:ids AS uuid[]))", 3, ids=ids)


async def test_extract_with_a_write_token_is_queued_and_its_atoms_are_embedded(
    stack: Stack,
) -> None:
    """/knowledge/extract publishes windows; the worker extracts, and its hook embeds the atoms."""
    channel = f"extract-{uuid.uuid4().hex[:6]}"
    texts = [
        f"Login is broken in {channel}: users get ERR_AUTH_401 after the deploy",
        f"Fixed it in {channel}: the hotfix for ERR_AUTH_401 is deployed",
        f"We decided in {channel} to go with Postgres partitioning",
    ]
    created = await stack.call(
        "POST", "/messages/batch", json={"messages": messages(channel, 3, lambda i: texts[i])}
    )
    ids = created.json()["ids"]
    queued = await stack.call("POST", "/knowledge/extract", json={"message_ids": ids, "window": 2})
    assert queued.status_code == 202, queued.text
    assert queued.json() == {"messages": 3, "tasks": 2, "status": "queued"}

    async def extracted() -> bool:
        sql = "SELECT count(*) FROM messages WHERE channel = :c AND extraction_status = 'done'"
        return int(await stack.scalar(sql, c=channel)) == 3

    await stack.wait_for("the messages extracted", extracted)
    atoms = (
        "id IN (SELECT atom_id FROM atom_messages am JOIN messages m ON m.id = am.message_id "
        "WHERE m.channel = :c)"
    )
    count = int(await stack.scalar(f"SELECT count(*) FROM atoms WHERE {atoms}", c=channel))
    assert count >= 3
    await stack.wait_embedded("atoms", atoms, count, c=channel)


async def test_provider_id_of_another_model_on_the_batch_route_is_refused(stack: Stack) -> None:
    """A provider that is neither the active nor a switch's target space's would write a third
    model's vectors into the column: 422 saying why, nothing queued."""
    created = await stack.call(
        "POST",
        "/providers",
        TokenScope.admin,
        json={
            "name": f"other-{uuid.uuid4().hex[:6]}",
            "type": "openai",
            "base_url": stack.stub.base_url,
            "api_key": KEY,
            "embedding_model": "text-embedding-3-large",
            "embedding_dimensions": DIMS,
        },
    )
    assert created.status_code == 201, created.text
    assert created.json()["is_default"] is False
    tag = f"prov-{uuid.uuid4().hex[:6]}"
    ids = await _insert_atoms(stack, tag, ["risk", "risk"])
    body = {"ids": ids, "provider_id": created.json()["id"]}
    refused = await stack.call("POST", "/embeddings/atoms/batch", json=body)
    assert refused.status_code == 422, refused.text
    assert "neither the active nor a switch's target" in refused.text
    assert "tasktracker embeddings switch" in refused.text
    models = await stack.scalar(
        "SELECT count(*) FROM atoms WHERE id = ANY(CAST(:ids AS uuid[])) "
        "AND embedding_model = 'text-embedding-3-large'",
        ids=ids,
    )
    assert models == 0


async def test_atom_embed_now_search_filters_and_similar(stack: Stack) -> None:
    """Embed-now embeds in the request; atom search honours types and topic; similar skips self."""
    tag = f"atoms-{uuid.uuid4().hex[:6]}"
    ids = await _insert_atoms(stack, tag, ["problem", "problem", "decision", "risk"])
    async with stack.engine.begin() as conn:
        topic = (
            await conn.execute(
                text("INSERT INTO topics (id, name) VALUES (gen_random_uuid(), :n) RETURNING id"),
                {"n": tag},
            )
        ).scalar_one()
        await conn.execute(
            text("INSERT INTO topic_atoms (topic_id, atom_id) VALUES (:t, CAST(:a AS uuid))"),
            [{"t": topic, "a": atom} for atom in ids[1:3]],
        )
    for atom in ids:
        now = await stack.call("POST", f"/embeddings/atoms/{atom}")
        assert now.status_code == 200, now.text
        assert now.json()["embedded"] == 1
    assert (await stack.call("POST", f"/embeddings/atoms/{ids[0]}")).json()["skipped"] == 1

    async def search(**filters: object) -> set[str]:
        body = {"query": f"{tag} problem number 1", "limit": 100, **filters}
        found = await stack.call("POST", "/semantic_search/atoms", TokenScope.search, json=body)
        assert found.status_code == 200, found.text
        return {hit["id"] for hit in found.json()["results"]} & set(ids)

    assert await search() == set(ids)
    assert await search(types=["problem"]) == set(ids[:2])
    assert await search(types=["decision", "risk"]) == set(ids[2:])
    assert await search(topic_id=str(topic)) == set(ids[1:3])
    assert await search(types=["problem"], topic_id=str(topic)) == {ids[1]}

    similar = await stack.call(
        "GET", f"/semantic_search/atoms/{ids[0]}/similar", TokenScope.search, params={"limit": 100}
    )
    hits = [hit["id"] for hit in similar.json()["results"]]
    assert len(hits) >= 3 and set(ids[1:]) <= set(hits) and ids[0] not in hits


async def test_search_offset_900_is_the_last_page_and_901_is_refused(stack: Stack) -> None:
    """limit + offset stay within 1,000: offset 900 answers, 901 is a 422 naming offset."""
    body = {"query": "bulk", "limit": 100, "offset": 900}
    last = await stack.call("POST", "/semantic_search/messages", TokenScope.search, json=body)
    assert last.status_code == 200, last.text
    assert last.json()["offset"] == 900
    body["offset"] = 901
    over = await stack.call("POST", "/semantic_search/messages", TokenScope.search, json=body)
    assert over.status_code == 422 and "offset" in over.json()["error"]


async def test_an_unknown_or_inactive_provider_id_is_refused_and_nothing_is_queued(
    stack: Stack,
) -> None:
    """Not queued to fail in the worker: 404 for an unknown id, 422 naming an inactive one."""
    created = await stack.call(
        "POST",
        "/providers",
        TokenScope.admin,
        json={
            "name": f"off-{uuid.uuid4().hex[:6]}",
            "type": "openai",
            "base_url": stack.stub.base_url,
            "embedding_model": "text-embedding-3-small",
            "embedding_dimensions": DIMS,
        },
    )
    off = created.json()
    await stack.call(
        "PATCH", f"/providers/{off['id']}", TokenScope.admin, json={"is_active": False}
    )
    ids = await _insert_atoms(stack, f"refused-{uuid.uuid4().hex[:6]}", ["risk"])
    unknown = uuid.uuid4()
    for provider_id, status, error in (
        (unknown, 404, f"provider {unknown} not found"),
        (off["id"], 422, f"provider {off['name']!r} is not active"),
    ):
        body = {"ids": ids, "provider_id": str(provider_id)}
        refused = await stack.call("POST", "/embeddings/atoms/batch", json=body)
        assert refused.status_code == status, refused.text
        assert refused.json()["error"] == error
    queued = await stack.scalar(
        "SELECT embedding_queued_at FROM atoms WHERE id = CAST(:id AS uuid)", id=ids[0]
    )
    assert queued is None, "nothing was published"
