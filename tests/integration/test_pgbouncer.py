"""The product behind PgBouncer in transaction mode (SCALING.md's advice past ~300 connections):
the API and a worker on a real PgBouncer with two server connections for many clients, so
that their transactions take turns on the same server sessions."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import text

from app.core.config import Settings
from app.core.urls import database_name, to_asyncpg_url
from app.db import create_engine, session_factory
from app.embedding.entities import MESSAGES
from app.models.api_token import TokenScope
from app.search.semantic_search_service import explain_vector_page, search
from testkit.launchers import PgBouncer
from tests.apps import app_with_state
from tests.conftest import alembic
from tests.integration.conftest import Pipeline, cli
from tests.live import live_stack

pytestmark = pytest.mark.skipif(
    PgBouncer.binary() is None,
    reason="PgBouncer is not installed (Debian's pgbouncer package; .ci/run installs it)",
)
ROWS = 1200  # above SearchTuning.index_min_rows: searches run with the index-only plans
SEARCH = "/api/v1/semantic_search/messages"
SETTINGS_SQL = text(
    "SELECT current_setting('hnsw.ef_search', true), current_setting('hnsw.iterative_scan', "
    "true), current_setting('enable_seqscan'), current_setting('plan_cache_mode')"
)


async def test_api_and_worker_through_pgbouncer_in_transaction_mode(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    bouncer = PgBouncer(pipeline.db_url, tmp_path / "pgbouncer").start()
    pooled_url = bouncer.url(database_name(pipeline.db_url))
    env = {
        "DATABASE_URL": pooled_url,
        "DATABASE_POOL_MODE": "transaction",
        "DATABASE_DIRECT_URL": pipeline.db_url,
    }
    try:
        async with live_stack(pipeline, **env) as stack:
            token = await stack.token(TokenScope.write)
            headers = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(
                base_url=stack.base_url, headers=headers, timeout=60
            ) as http:
                # Writes: ingest through the API, embedded by the worker, both on the pooler.
                for start in range(0, ROWS, 600):
                    batch = [
                        {"author": "a", "channel": f"c{i % 3}", "content": f"note {i} on deploys"}
                        for i in range(start, start + 600)
                    ]
                    response = await http.post("/api/v1/messages/batch", json={"messages": batch})
                    assert response.status_code == 201, response.text
                await pipeline.wait_current("messages", ROWS)

                # Reads: more clients at once than PgBouncer has server connections.
                queries = [f"note {i} on deploys" for i in range(0, 48, 2)]
                pages = await asyncio.gather(
                    *(http.post(SEARCH, json={"query": q, "limit": 10}) for q in queries)
                )
                assert [p.status_code for p in pages] == [200] * len(queries), pages[0].text
                # every query is some row's text: the stub gives that row's vector (or a tie's)
                for page in pages:
                    assert page.json()["results"][0]["similarity"] > 0.9999
                    assert page.json()["ef_search"] == 100

                # The same search on the server itself finds rows as near (ties aside, the same).
                direct = create_engine(to_asyncpg_url(pipeline.db_url), pipeline.settings())
                try:
                    async with session_factory(direct)() as session:
                        for page, query in zip(pages[:5], queries[:5], strict=True):
                            vector = np.asarray(pipeline.stub.vector(query), dtype=np.float32)
                            found = await search(session, MESSAGES, vector, limit=10)
                            await session.commit()
                            assert [round(h.similarity or 0, 4) for h in found.hits] == [
                                round(row["similarity"], 4) for row in page.json()["results"]
                            ]
                finally:
                    await direct.dispose()
        # Nothing piles up on the server sessions the API and the worker shared.
        assert await _prepared_statements(pooled_url) == [0, 0]
    finally:
        bouncer.stop()


async def _prepared_statements(pooled_url: str) -> list[int]:
    """Named prepared statements on each of PgBouncer's two server sessions: two transactions
    open at once hold one each."""
    settings = Settings(database_url=pooled_url, database_pool_mode="transaction")
    engine = create_engine(settings=settings, pool_size=2)
    try:
        async with engine.connect() as first, engine.connect() as second:
            counts = {}
            for conn in (first, second):
                pid, count = (
                    await conn.execute(
                        text("SELECT pg_backend_pid(), count(*) FROM pg_prepared_statements")
                    )
                ).one()
                counts[pid] = int(count)
            await first.commit()
            await second.commit()
    finally:
        await engine.dispose()
    assert len(counts) == 2, counts
    return sorted(counts.values())


async def test_a_search_through_pgbouncer_runs_with_its_settings_and_leaves_none_behind(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    from tests.factories import embed_randomly_sql, insert_messages_sql

    async with pipeline.engine.begin() as conn:
        await insert_messages_sql(conn, ROWS)
        await embed_randomly_sql(conn, "messages", 384)
        await conn.execute(text("ANALYZE messages"))
    bouncer = PgBouncer(pipeline.db_url, tmp_path / "pgbouncer").start()
    settings = Settings(
        database_url=bouncer.url(database_name(pipeline.db_url)), database_pool_mode="transaction"
    )
    engine = create_engine(settings=settings, search=True, pool_size=6)
    vector = np.ones(384, dtype=np.float32) / np.sqrt(384)

    async def one(limit: int) -> tuple[tuple[str, ...], tuple[str, ...], int]:
        async with session_factory(engine)() as session:
            page = await search(session, MESSAGES, vector, limit=limit)
            during = tuple((await session.execute(SETTINGS_SQL)).one())
            await session.commit()
            after = tuple((await session.execute(SETTINGS_SQL)).one())
            await session.commit()
            return during, after, len(page.hits)

    try:
        # Six clients on two server sessions: each search's settings are its transaction's,
        # and the next transaction on that server session has PostgreSQL's defaults again.
        for during, after, hits in await asyncio.gather(*(one(5 + i) for i in range(24))):
            assert during == ("100", "relaxed_order", "off", "force_custom_plan")
            assert after[0] in ("40", None) and after[1] in ("off", None), after  # pgvector's
            assert after[2:] == ("on", "auto"), after  # and PostgreSQL's defaults
            assert hits > 0
        async with session_factory(engine)() as session:
            plan = await explain_vector_page(session, MESSAGES, vector, limit=10, offset=300)
        assert "Index Scan using messages_embedding_hnsw_idx" in plan, plan
        assert "Seq Scan" not in plan, plan
    finally:
        await engine.dispose()
        bouncer.stop()


async def test_pgbouncer_without_the_pool_mode_is_one_line_naming_the_fix(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    bouncer = PgBouncer(pipeline.db_url, tmp_path / "pgbouncer").start()
    pooled_url = bouncer.url(database_name(pipeline.db_url))
    try:
        # The CLI: PgBouncer refuses the settings a connection starts with; one line says why.
        result = cli("status", env={"DATABASE_URL": pooled_url, "DATA_DIR": str(tmp_path)})
        assert result.returncode != 0
        output = result.stdout + result.stderr
        assert "DATABASE_POOL_MODE=transaction" in output, output
        assert "Traceback" not in output, output

        # The API's readiness says the same instead of a bare error name.
        settings = Settings(database_url=pooled_url, nats_url="nats://127.0.0.1:1")
        app, state = app_with_state(settings)
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://test"
            ) as http:
                ready = await http.get("/api/v1/health/ready")
            assert ready.status_code == 503
            assert "DATABASE_POOL_MODE=transaction" in ready.json()["checks"]["database"]
        finally:
            await state.close()

        # Migrations need a session: through the pooler alone, alembic names DATABASE_DIRECT_URL
        pooled_env = {"DATABASE_POOL_MODE": "transaction", "DATA_DIR": str(tmp_path)}
        refused = alembic(pooled_url, "upgrade", "head", env=pooled_env)
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines() == [
            line for line in refused.stderr.strip().splitlines() if line.startswith("error:")
        ], refused.stderr
        assert "DATABASE_DIRECT_URL" in refused.stderr, refused.stderr
        direct_env = {**pooled_env, "DATABASE_DIRECT_URL": pipeline.db_url}
        done = alembic(pooled_url, "upgrade", "head", env=direct_env)
        assert done.returncode == 0, done.stderr
    finally:
        bouncer.stop()
