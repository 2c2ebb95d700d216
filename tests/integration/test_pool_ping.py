"""A pooled connection is checked before a request gets it, in one round trip, and a dead one is
replaced by a live one instead of failing the request."""

from __future__ import annotations

import asyncio
import time

import asyncpg
from sqlalchemy import text

from app.core.config import Settings
from app.core.urls import to_asyncpg_url, to_libpq_url
from app.db import create_engine

PID = text("SELECT pg_backend_pid()")


async def _gone(db_url: str, pid: int, timeout: float = 30.0) -> None:
    conn = await asyncpg.connect(to_libpq_url(db_url))
    try:
        await conn.execute("SELECT pg_terminate_backend($1)", pid)
        deadline = time.monotonic() + timeout
        while await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
            assert time.monotonic() < deadline, f"backend {pid} still there"
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def test_a_checkout_pings_in_one_round_trip_and_replaces_a_dead_connection(
    db_url: str,
) -> None:
    engine = create_engine(to_asyncpg_url(db_url), Settings(database_url=db_url), pool_size=2)
    sent: list[str] = []
    try:
        async with engine.connect() as conn, engine.connect() as other:
            first = (await conn.execute(PID)).scalar()
            second = (await other.execute(PID)).scalar()
            for c in (conn, other):
                raw = await c.get_raw_connection()
                raw.driver_connection.add_query_logger(lambda record: sent.append(record.query))
            await conn.commit()
            await other.commit()

        # A pooled connection: one query before the request's own statements.
        sent.clear()
        async with engine.connect() as conn:
            assert (await conn.execute(PID)).scalar() in (first, second)
            await conn.commit()
        # asyncpg logs its simple queries (the request's own statement is a prepared one):
        # pool_pre_ping would show BEGIN; and ROLLBACK; around its ping, before the request's.
        assert sent == ["SELECT 1", "BEGIN;", "COMMIT;"], sent

        # Both killed on the server while idle in the pool (as a restart does): each checkout
        # gets a new backend, not an error.
        await _gone(db_url, first)
        await _gone(db_url, second)
        async with engine.connect() as conn, engine.connect() as other:
            replaced = {(await c.execute(PID)).scalar() for c in (conn, other)}
            await conn.commit()
            await other.commit()
        assert len(replaced) == 2 and not replaced & {first, second}, replaced
    finally:
        await engine.dispose()
