"""Switching the embedding model online: real Postgres, NATS, worker, API and CLI processes.

The active space is the pipeline's stub model at 384 dimensions (text-embedding-3-small served
by the OpenAI stub, standing in for the local model so the check per row is exact); the target
is text-embedding-3-large at 1536 from the same stub. The stub's vectors are a pure function of
(text, dimension), so every search result's similarity tells which model made both vectors.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import text

from app.auth import token_service
from app.core.embedded import free_port
from app.core.supervisor import Child, api_child, stop_all
from app.db import session_factory
from app.embedding.entities import ATOMS, MESSAGES
from app.models.api_token import TokenScope
from tests.conftest import alembic
from tests.integration.conftest import Pipeline, insert_atoms, insert_messages

pytestmark = pytest.mark.slow
SMALL, LARGE = "text-embedding-3-small", "text-embedding-3-large"
DIMS = {SMALL: 384, LARGE: 1536}


@dataclass
class Api:
    base_url: str
    tokens: dict[TokenScope, str]
    child: Child

    async def call(
        self, method: str, path: str, scope: TokenScope = TokenScope.admin, **kwargs: Any
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[scope]}"}
        async with httpx.AsyncClient(base_url=self.base_url, timeout=60) as client:
            return await client.request(method, f"/api/v1{path}", headers=headers, **kwargs)


@pytest.fixture
async def api(pipeline: Pipeline) -> AsyncIterator[Api]:
    tokens = {}
    async with session_factory(pipeline.engine)() as session:
        for scope in TokenScope:
            tokens[scope], _ = await token_service.create_token(session, scope, f"t {scope}")
        await session.commit()
    port = free_port()
    child = api_child(pipeline.env, "127.0.0.1", port, "--log-level", "warning")
    child.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            while time.monotonic() < deadline:
                try:
                    if (await client.get("/api/v1/health/ready")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        yield Api(base, tokens, child)
    finally:
        stop_all([child])


async def cli(
    pipeline: Pipeline, *args: str, timeout: float = 600, command: str = "embeddings"
) -> tuple[int, str]:
    """`tasktracker embeddings ...` (or another `command`) as a child process: (exit code, output)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        command,
        *args,
        env={**os.environ, **pipeline.env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        out, _ = await process.communicate()
        logs = "\n".join(w.output()[-3000:] for w in pipeline.workers)
        pytest.fail(f"embeddings {' '.join(args)}: no end in {timeout}s\n{out.decode()}\n{logs}")
    return int(process.returncode or 0), out.decode(errors="replace")


async def create_large(api: Api, pipeline: Pipeline, name: str = "large") -> None:
    response = await api.call(
        "POST",
        "/providers",
        json={
            "name": name,
            "type": "openai",
            "base_url": pipeline.stub.base_url,
            "api_key": "test-key",
            "embedding_model": LARGE,
            "embedding_dimensions": 1536,
        },
    )
    assert response.status_code == 201, response.text


TARGET_COLUMNS_SQL = (
    "SELECT count(*) FROM pg_attribute WHERE attrelid = 'messages'::regclass "
    "AND attname = 'embedding_content_hash_next' AND NOT attisdropped"
)


async def scalar(pipeline: Pipeline, sql: str) -> Any:
    async with pipeline.engine.connect() as conn:
        return (await conn.execute(text(sql))).scalar()


async def seeded(pipeline: Pipeline, messages: int, atoms: int) -> None:
    await insert_messages(pipeline.engine, messages)
    await insert_atoms(pipeline.engine, atoms)
    pipeline.worker()
    await pipeline.enqueue_all(MESSAGES, ATOMS)
    await pipeline.wait_current("messages", messages)
    await pipeline.wait_current("atoms", atoms)


@dataclass
class Traffic:
    """A client ingesting and searching without pause; every answer kept."""

    searches: list[tuple[str, httpx.Response]] = field(default_factory=list)
    ingested: list[str] = field(default_factory=list)
    similar: list[httpx.Response] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, api: Api) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            content = f"ingested during the switch {i} {uuid.uuid4().hex[:6]}"
            posted = await api.call(
                "POST",
                "/messages",
                TokenScope.write,
                json={"author": "a", "channel": "live", "content": content},
            )
            assert posted.status_code == 201, posted.text
            self.ingested.append(content)
            query = f"message number {i % 50} about deploys"
            entity = "messages" if i % 3 else "atoms"
            answer = await api.call(
                "POST",
                f"/semantic_search/{entity}",
                TokenScope.search,
                json={"query": query, "limit": 5},
            )
            self.searches.append((query, answer))
            if i % 4 == 0:  # similar items read a stored vector: one model's too
                similar = await api.call(
                    "GET",
                    f"/semantic_search/messages/{posted.json()['ids'][0]}/similar",
                    TokenScope.search,
                )
                self.similar.append(similar)
            await asyncio.sleep(0.05)


def expected_similarity(pipeline: Pipeline, query: str, item: dict[str, Any], model: str) -> float:
    dims = DIMS[model]
    document = item["content"] if "title" not in item else f"{item['title']}\n\n{item['content']}"
    q, d = pipeline.stub.vector(query, dims), pipeline.stub.vector(document, dims)
    return float(np.dot(q, d) / (np.linalg.norm(q) * np.linalg.norm(d)))


def check_one_model_per_response(pipeline: Pipeline, traffic: Traffic) -> set[str]:
    """Every search answered 200; every row's similarity is the one its response's model gives."""
    models = set()
    for query, answer in traffic.searches:
        assert answer.status_code == 200, answer.text
        body = answer.json()
        model = body["embedding_model"]
        models.add(model)
        for hit in body["results"]:
            want = expected_similarity(pipeline, query, hit["item"], model)
            assert abs(hit["similarity"] - want) < 2e-3, (model, query, hit, want)
    return models


@pytest.mark.timeout(900)
async def test_switch_under_ingest_and_search_never_mixes_models(
    pipeline: Pipeline, api: Api
) -> None:
    """384 -> 1536 while a client ingests and searches: no failed search, one model per answer,
    100%, cutover, rows ingested meanwhile searchable in the new model, finish drops the old."""
    await seeded(pipeline, 200, 60)
    await create_large(api, pipeline)
    traffic = Traffic()
    client = asyncio.create_task(traffic.run(api))
    try:
        await asyncio.sleep(2)
        code, out = await cli(pipeline, "switch", "--provider", "large", "--wait", timeout=300)
        assert code == 0, out
        assert "ready" in out
        code, out = await cli(pipeline, "cutover", timeout=120)
        assert code == 0, out
        await asyncio.sleep(3)
    finally:
        traffic.stop.set()
        await client
    models = check_one_model_per_response(pipeline, traffic)
    assert models == {SMALL, LARGE}, models
    # a message just ingested may have no vector yet (409); never a failure
    assert all(r.status_code in (200, 409) for r in traffic.similar), [
        r.text for r in traffic.similar if r.status_code not in (200, 409)
    ]
    assert any(r.status_code == 200 for r in traffic.similar)
    assert len(traffic.searches) > 20

    # every row, those ingested during the switch too, is in the new model's column
    await pipeline.wait_for(
        "SELECT count(*) = 0 FROM messages WHERE embedding IS NULL "
        "OR embedding_content_hash IS DISTINCT FROM content_hash OR vector_dims(embedding) <> 1536",
        timeout=120,
    )
    during = traffic.ingested[len(traffic.ingested) // 2]
    found = await api.call(
        "POST", "/semantic_search/messages", TokenScope.search, json={"query": during, "limit": 10}
    )
    # The stub picks each text's vector from a pool of 4,096: another text may share it and tie
    # at similarity 1, so the row is among the hits at the top similarity, not always first.
    hits = found.json()["results"]
    top = max(h["similarity"] for h in hits)
    assert top > 0.999, hits[:3]
    assert during in [h["item"]["content"] for h in hits if h["similarity"] > top - 1e-4], hits[:3]
    assert found.json()["embedding_model"] == LARGE

    code, out = await cli(pipeline, "finish")
    assert code == 0, out
    for table in ("messages", "atoms"):
        assert not await scalar(
            pipeline,
            f"SELECT count(*) FROM pg_attribute WHERE attrelid = '{table}'::regclass "
            "AND attname LIKE 'embedding%_prev' AND NOT attisdropped",
        )
        assert (
            await scalar(pipeline, f"SELECT to_regclass('{table}_embedding_prev_hnsw_idx')") is None
        )
        assert await scalar(
            pipeline,
            f"SELECT indisvalid FROM pg_index WHERE indexrelid = '{table}_embedding_hnsw_idx'::regclass",
        )


FILLFACTOR_SQL = (
    "SELECT o FROM pg_class, unnest(reloptions) AS o WHERE relname = 'messages' "
    "AND o LIKE 'fillfactor=%'"
)
HNSW_PAGES_SQL = "SELECT pg_relation_size('messages_embedding_hnsw_idx') / 8192"


@pytest.mark.timeout(900)
async def test_the_fill_updates_rows_without_touching_their_indexes(
    pipeline: Pipeline, api: Api
) -> None:
    """A non-HOT update inserts the row into every index, the active HNSW index among them (the
    fill ran at 245 rows/s for it): during the fill the target has no index and the table room
    on its pages, so of a row's queued, claimed and written updates only the first moves it;
    the indexes are built after the fill and the fillfactor is put back at the cutover."""
    rows = 400
    await seeded(pipeline, rows, 20)
    await create_large(api, pipeline)
    # autovacuum would let the index reuse the space of dead entries: not during this count
    async with pipeline.engine.begin() as conn:
        await conn.execute(text("ALTER TABLE messages SET (autovacuum_enabled = false)"))
    pages_before = await scalar(pipeline, HNSW_PAGES_SQL)
    code, out = await cli(pipeline, "switch", "--provider", "large")
    assert code == 0, out
    await pipeline.wait_for(
        "SELECT count(*) = 0 FROM messages WHERE embedding_content_hash_next "
        "IS DISTINCT FROM content_hash",
        timeout=180,
    )
    assert not await scalar(
        pipeline,
        "SELECT string_agg(indexname, ', ') FROM pg_indexes WHERE tablename = 'messages' "
        "AND indexdef LIKE '%\\_next%'",
    )
    assert await scalar(pipeline, FILLFACTOR_SQL) == "fillfactor=50"
    # Each row is updated three times; each non-HOT update enters it in the HNSW index again:
    # before, the index grew by two to three times its size.
    grown = await scalar(pipeline, HNSW_PAGES_SQL) - pages_before
    assert grown <= 1.5 * pages_before, (pages_before, grown)

    code, out = await cli(pipeline, "switch", "--provider", "large", "--wait")
    assert code == 0, out
    for name in ("ix_messages_embedding_pending_next", "messages_embedding_next_hnsw_idx"):
        valid = f"SELECT indisvalid FROM pg_index WHERE indexrelid = '{name}'::regclass"
        assert await scalar(pipeline, valid), name
    code, out = await cli(pipeline, "cutover")
    assert code == 0, out
    assert await scalar(pipeline, FILLFACTOR_SQL) is None
    assert await scalar(
        pipeline,
        "SELECT indisvalid FROM pg_index "
        "WHERE indexrelid = 'ix_messages_embedding_pending'::regclass",
    )


@pytest.mark.timeout(900)
async def test_the_api_cutover_answers_409_and_builds_no_index(
    pipeline: Pipeline, api: Api
) -> None:
    """An index build is minutes at size: the cutover route never runs one in the request; it
    answers 409 naming the command that builds it, and cuts over once it is built."""
    await seeded(pipeline, 60, 10)
    await create_large(api, pipeline)
    started = await api.call("POST", "/embeddings/switch", json={"provider": "large"})
    assert started.status_code == 202, started.text
    await pipeline.wait_for(
        "SELECT count(*) = 0 FROM messages WHERE embedding_content_hash_next "
        "IS DISTINCT FROM content_hash",
        timeout=180,
    )
    refused = await api.call("POST", "/embeddings/cutover", json={"force": True})
    assert refused.status_code == 409, refused.text
    assert "tasktracker embeddings switch --provider large --wait" in refused.text
    for name in ("messages_embedding_next_hnsw_idx", "atoms_embedding_next_hnsw_idx"):
        assert await scalar(pipeline, f"SELECT to_regclass('{name}')") is None, name
    assert await scalar(pipeline, "SELECT vector_dims(embedding) FROM messages LIMIT 1") == 384

    code, out = await cli(pipeline, "switch", "--provider", "large", "--wait")
    assert code == 0, out
    done = await api.call("POST", "/embeddings/cutover", json={})
    assert done.status_code == 200, done.text
    assert await scalar(pipeline, "SELECT vector_dims(embedding) FROM messages LIMIT 1") == 1536


@pytest.mark.timeout(900)
async def test_rollback_restores_the_old_vectors_and_a_second_switch_works(
    pipeline: Pipeline, api: Api
) -> None:
    await seeded(pipeline, 120, 30)
    before = await scalar(
        pipeline, "SELECT md5(string_agg(embedding::text, ',' ORDER BY id)) FROM messages"
    )
    await create_large(api, pipeline)
    code, out = await cli(pipeline, "switch", "--provider", "large", "--wait")
    assert code == 0, out
    code, out = await cli(pipeline, "cutover")
    assert code == 0, out
    assert await scalar(pipeline, "SELECT vector_dims(embedding) FROM messages LIMIT 1") == 1536, (
        out
    )

    code, out = await cli(pipeline, "rollback")
    assert code == 0, out
    after = await scalar(
        pipeline, "SELECT md5(string_agg(embedding::text, ',' ORDER BY id)) FROM messages"
    )
    assert after == before
    answer = await api.call(
        "POST",
        "/semantic_search/messages",
        TokenScope.search,
        json={"query": "deploys", "limit": 3},
    )
    assert answer.status_code == 200 and answer.json()["embedding_model"] == SMALL

    code, out = await cli(pipeline, "switch", "--provider", "large", "--wait")
    assert code == 0, out
    assert (await cli(pipeline, "cutover"))[0] == 0
    answer = await api.call(
        "POST", "/semantic_search/atoms", TokenScope.search, json={"query": "Atom 3", "limit": 3}
    )
    assert answer.status_code == 200 and answer.json()["embedding_model"] == LARGE


@pytest.mark.timeout(900)
async def test_killed_worker_and_command_resume_without_embedding_twice(
    pipeline: Pipeline, api: Api
) -> None:
    await seeded(pipeline, 600, 0)
    await create_large(api, pipeline)
    pipeline.stub.reset()
    pipeline.stub.set_latency(ms=400)
    command = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        "embeddings",
        "switch",
        "--provider",
        "large",
        "--wait",
        env={**os.environ, **pipeline.env},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    done_sql = "SELECT count(*) FROM messages WHERE embedding_content_hash_next = content_hash"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if (await scalar(pipeline, TARGET_COLUMNS_SQL)) and (
            await scalar(pipeline, done_sql) or 0
        ) >= 100:
            break
        await asyncio.sleep(0.1)
    for worker in pipeline.workers:
        worker.kill()
    command.send_signal(signal.SIGKILL)
    await command.wait()
    async with pipeline.engine.connect() as conn:
        done = set(
            (
                await conn.execute(
                    text(
                        "SELECT content FROM messages WHERE embedding_content_hash_next = content_hash"
                    )
                )
            ).scalars()
        )
    assert 100 <= len(done) < 600, len(done)

    pipeline.stub.set_latency(ms=0)
    pipeline.worker()
    code, out = await cli(pipeline, "switch", "--provider", "large", "--wait")
    assert code == 0, out
    assert await scalar(pipeline, done_sql) == 600
    counts = pipeline.stub.stats()["text_counts"]
    assert all(counts[content] == 1 for content in done), [
        (c, counts[c]) for c in done if counts[c] != 1
    ][:5]


async def test_a_running_worker_uses_a_changed_provider_within_seconds(
    pipeline: Pipeline, api: Api
) -> None:
    made = await api.call(
        "POST",
        "/providers",
        json={
            "name": "main",
            "type": "openai",
            "base_url": pipeline.stub.base_url,
            "api_key": "test-key",
            "embedding_model": SMALL,
            "embedding_dimensions": 384,
            "is_default": True,
        },
    )
    assert made.status_code == 201, made.text
    pipeline.worker()
    await insert_messages(pipeline.engine, 5, prefix="first")
    await pipeline.enqueue_all(MESSAGES)
    await pipeline.wait_current("messages", 5)

    # the key rotates: the stub takes only the new one, the API stores it
    pipeline.stub.control({"api_key": "rotated-key"})
    patched = await api.call(
        "PATCH", f"/providers/{made.json()['id']}", json={"api_key": "rotated-key"}
    )
    assert patched.status_code == 200, patched.text
    began = time.monotonic()
    await insert_messages(pipeline.engine, 5, prefix="second")
    await pipeline.enqueue_all(MESSAGES)
    await pipeline.wait_current("messages", 10, timeout=60)
    assert time.monotonic() - began < 60
    assert pipeline.stub.authorizations[-1] == "Bearer rotated-key"

    # a default of another dimension is refused with the command that moves to it
    refused = await api.call(
        "POST",
        "/providers",
        json={
            "name": "wide",
            "type": "openai",
            "base_url": pipeline.stub.base_url,
            "embedding_model": LARGE,
            "embedding_dimensions": 1536,
            "is_default": True,
        },
    )
    assert refused.status_code == 409, refused.text
    assert "tasktracker embeddings switch --provider wide" in refused.text
    assert "alembic downgrade" not in refused.text


@pytest.mark.timeout(900)
async def test_a_halfvec_space_is_filled_indexed_and_searched(pipeline: Pipeline, api: Api) -> None:
    """halfvec is a storage choice: the column, its HNSW opclass, search and similar items;
    `alembic downgrade` below 0005 refuses while it is active."""
    await seeded(pipeline, 80, 20)
    await create_large(api, pipeline)
    code, out = await cli(
        pipeline, "switch", "--provider", "large", "--storage", "halfvec", "--wait"
    )
    assert code == 0, out
    code, out = await cli(pipeline, "cutover")
    assert code == 0, out
    assert (
        await scalar(
            pipeline,
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'messages'::regclass AND attname = 'embedding'",
        )
        == "halfvec(1536)"
    )
    assert (
        await scalar(
            pipeline,
            "SELECT o.opcname FROM pg_index i JOIN pg_opclass o ON o.oid = i.indclass[0] "
            "WHERE i.indexrelid = 'messages_embedding_hnsw_idx'::regclass",
        )
        == "halfvec_cosine_ops"
    )
    query = "message number 7 about deploys"
    answer = await api.call(
        "POST", "/semantic_search/messages", TokenScope.search, json={"query": query, "limit": 5}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["embedding_model"] == LARGE
    for hit in answer.json()["results"]:
        want = expected_similarity(pipeline, query, hit["item"], LARGE)
        assert abs(hit["similarity"] - want) < 5e-3
    first = answer.json()["results"][0]["id"]
    similar = await api.call("GET", f"/semantic_search/messages/{first}/similar", TokenScope.search)
    assert similar.status_code == 200, similar.text
    status = await api.call("GET", "/embeddings/status", TokenScope.search)
    assert status.status_code == 200, status.text
    assert all(index["healthy"] for index in status.json()["indexes"]), status.json()["indexes"]
    spaces = {(s["entity"], s["state"]): s for s in status.json()["spaces"]}
    assert spaces[("messages", "active")]["storage"] == "halfvec"
    assert spaces[("messages", "previous")]["coverage_pct"] == 100.0

    # The index commands know the space's opclass: status calls it healthy, rebuild keeps it.
    code, out = await cli(pipeline, "status", "--json", command="index")
    assert code == 0, out
    assert all(r["healthy"] for r in json.loads(out[out.index("[") :])), out
    code, out = await cli(pipeline, "rebuild", "--entity", "messages", command="index")
    assert code == 0, out
    assert (
        await scalar(
            pipeline,
            "SELECT o.opcname FROM pg_index i JOIN pg_opclass o ON o.oid = i.indclass[0] "
            "WHERE i.indexrelid = 'messages_embedding_hnsw_idx'::regclass AND i.indisvalid",
        )
        == "halfvec_cosine_ops"
    )

    # Revision 0004 has no halfvec: its downgrade refuses and names the switch back to vector.
    code, out = await cli(pipeline, "finish")
    assert code == 0, out
    downgrade_refused(pipeline, "`tasktracker embeddings switch --provider NAME --storage vector")


async def test_routes_refuse_a_third_model_and_the_switch_is_admin_only(
    pipeline: Pipeline, api: Api
) -> None:
    """provider_id may only name the active or target space's provider; switching is admin's."""
    await create_large(api, pipeline, "third")
    third = next(p for p in (await api.call("GET", "/providers")).json() if p["name"] == "third")
    await insert_messages(pipeline.engine, 3)
    ids = [str(i) for i in (await scalar_ids(pipeline))]
    for path, body in (
        ("/embeddings/messages/batch", {"ids": ids, "provider_id": third["id"]}),
        ("/knowledge/extract", {"message_ids": ids, "provider_id": third["id"]}),
    ):
        answer = await api.call("POST", path, TokenScope.write, json=body)
        assert answer.status_code == 422, (path, answer.text)
        assert "neither the active nor a switch's target" in answer.text
        assert "tasktracker embeddings switch" in answer.text
    refused = await api.call(
        "POST", "/embeddings/switch", TokenScope.write, json={"provider": "third"}
    )
    assert refused.status_code == 403
    early = await api.call("POST", "/embeddings/cutover", json={})
    assert early.status_code == 409 and "no switch under way" in early.text
    started = await api.call("POST", "/embeddings/switch", json={"provider": "third"})
    assert started.status_code == 202, started.text
    states = {(s["entity"], s["state"]) for s in started.json()["spaces"]}
    assert ("messages", "target") in states and ("atoms", "target") in states
    # now the target's provider is allowed
    allowed = await api.call(
        "POST",
        "/embeddings/messages/batch",
        TokenScope.write,
        json={"ids": ids, "provider_id": third["id"]},
    )
    assert allowed.status_code == 200, allowed.text
    abandoned = await api.call("POST", "/embeddings/rollback")
    assert abandoned.status_code == 200 and "abandoned" in abandoned.text
    assert (
        await scalar(
            pipeline,
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'messages'::regclass "
            "AND attname = 'embedding_next' AND NOT attisdropped",
        )
        == 0
    )


async def scalar_ids(pipeline: Pipeline) -> list[uuid.UUID]:
    async with pipeline.engine.connect() as conn:
        return list((await conn.execute(text("SELECT id FROM messages ORDER BY id"))).scalars())


def downgrade_refused(pipeline: Pipeline, fix: str) -> None:
    """`alembic downgrade 0004` exits 1 with one line naming `fix`, and touches nothing."""
    result = alembic(pipeline.db_url, "downgrade", "0004", env=pipeline.env)
    assert result.returncode == 1, result.stdout + result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: cannot downgrade below 0005: "), result.stderr
    assert fix in line, line
    assert "Traceback" not in result.stderr
    assert "0005 (head)" in alembic(pipeline.db_url, "current", env=pipeline.env).stdout


@pytest.mark.timeout(900)
async def test_alembic_downgrade_after_a_switch_keeps_the_active_vectors(
    pipeline: Pipeline, api: Api
) -> None:
    """Mid-switch and cut over but not finished, `alembic downgrade` of 0005 refuses and names
    what to run first; after `finish` it leaves 0004 the seed's columns and indexes holding
    the active space's vectors, and `upgrade head` seeds the spaces from them again."""
    await seeded(pipeline, 40, 10)
    await create_large(api, pipeline)
    code, out = await cli(pipeline, "switch", "--provider", "large")
    assert code == 0, out
    downgrade_refused(pipeline, "Fix: `tasktracker embeddings rollback` to abandon it")
    code, out = await cli(pipeline, "switch", "--provider", "large", "--wait")
    assert code == 0, out
    code, out = await cli(pipeline, "cutover")
    assert code == 0, out
    downgrade_refused(pipeline, "Fix: `tasktracker embeddings finish` to keep the new model")
    new_vectors = await scalar(
        pipeline, "SELECT md5(string_agg(embedding::text, ',' ORDER BY id)) FROM messages"
    )
    code, out = await cli(pipeline, "finish")
    assert code == 0, out
    for worker in pipeline.workers:
        worker.stop()

    result = alembic(pipeline.db_url, "downgrade", "0004", env=pipeline.env)
    assert result.returncode == 0, result.stderr
    assert "0004" in alembic(pipeline.db_url, "current", env=pipeline.env).stdout
    assert await scalar(pipeline, "SELECT to_regclass('embedding_spaces')") is None
    for table in ("messages", "atoms"):
        assert (
            await scalar(
                pipeline,
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                f"WHERE attrelid = '{table}'::regclass AND attname = 'embedding'",
            )
            == "vector(1536)"
        )
        assert not await scalar(
            pipeline,
            f"SELECT count(*) FROM pg_attribute WHERE attrelid = '{table}'::regclass "
            "AND attname ~ '_(next|prev)$' AND NOT attisdropped",
        )
        assert (
            await scalar(
                pipeline,
                f"SELECT count(*) FROM {table} WHERE embedding IS NULL "
                "OR embedding_content_hash IS DISTINCT FROM content_hash",
            )
            == 0
        )
        assert await scalar(
            pipeline,
            "SELECT i.indisvalid AND o.opcname = 'vector_cosine_ops' FROM pg_index i "
            "JOIN pg_opclass o ON o.oid = i.indclass[0] "
            f"WHERE i.indexrelid = '{table}_embedding_hnsw_idx'::regclass",
        )
    assert new_vectors == await scalar(
        pipeline, "SELECT md5(string_agg(embedding::text, ',' ORDER BY id)) FROM messages"
    )

    result = alembic(pipeline.db_url, "upgrade", "head", env=pipeline.env)
    assert result.returncode == 0, result.stderr
    assert (
        await scalar(
            pipeline,
            "SELECT string_agg(entity || ':' || dimensions || ':' || model, ',' ORDER BY entity) "
            "FROM embedding_spaces WHERE state = 'active'",
        )
        == f"atoms:1536:{LARGE},messages:1536:{LARGE}"
    )
