"""Read-only work on a streaming replica (DATABASE_READ_URL), the primary when it cannot serve.

Searches (the search routes and the console's) take their session from `ReadRouter.session()`:
its connections, the replica's and the primary's alike, start with the index-only plans of a
vector search (`app.db.create_engine(search=True)`), so it is for searches only. The
replica serves while it answers and its replay lag stays within READ_REPLICA_MAX_LAG_SECONDS;
its health is read at most every READ_REPLICA_CHECK_SECONDS, and a connection it refuses sends
that request, and the following ones until the next check, to the primary. Writes, the
pipeline and migrations never come here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.urls import to_asyncpg_url
from app.db import create_engine, pooler_refusal, session_factory

logger = logging.getLogger(__name__)

# Replay lag: none while the replica has replayed all it received (an idle primary sends
# nothing, and the age of the last replayed transaction would grow without lag).
LAG_SQL = text(
    "SELECT pg_is_in_recovery(), CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() "
    "THEN 0 ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0) "
    "END::float8"
)
CHECK_TIMEOUT = 2.0
UNREACHABLE = (OSError, TimeoutError, DBAPIError, InterfaceError)


@dataclass
class ReplicaHealth:
    """What the last check saw."""

    configured: bool
    serving: bool = False
    lag_seconds: float | None = None
    reason: str = "not checked yet"
    checked_at: float = 0.0


class ReadRouter:
    """Sessions for read-only work: the replica's while it is fit, else the primary's."""

    def __init__(self, settings: Settings, primary: async_sessionmaker[AsyncSession]):
        self.primary = primary
        self.max_lag = settings.read_replica_max_lag_seconds
        self.check_every = settings.read_replica_check_seconds
        self.engine: AsyncEngine | None = None
        self.replica: async_sessionmaker[AsyncSession] | None = None
        if settings.database_read_url:
            self.engine = create_engine(
                to_asyncpg_url(settings.database_read_url),
                settings,
                search=True,
                pool_size=settings.db_pool_size,
                connect_args={"timeout": CHECK_TIMEOUT},
            )
            self.replica = session_factory(self.engine)
        self.health = ReplicaHealth(configured=self.replica is not None)
        self._lock = asyncio.Lock()

    async def check(self) -> ReplicaHealth:
        """Read the replica's state now: reachable, in recovery, and its replay lag."""
        if self.engine is None:
            return self.health
        try:
            async with self.engine.connect() as conn:
                in_recovery, lag = (
                    await asyncio.wait_for(conn.execute(LAG_SQL), CHECK_TIMEOUT)
                ).one()
        except UNREACHABLE as exc:
            self._set(False, None, _unreachable(exc))
            return self.health
        if not in_recovery:
            self._set(False, None, "not a replica (pg_is_in_recovery() is false)")
        elif lag > self.max_lag:
            self._set(False, lag, f"replay lag {lag:.1f} s over {self.max_lag:g} s")
        else:
            self._set(True, lag, "serving")
        return self.health

    def _set(self, serving: bool, lag: float | None, reason: str) -> None:
        if serving != self.health.serving:
            log = logger.info if serving else logger.warning
            log("read replica %s: %s", "serving" if serving else "not serving", reason)
        self.health = ReplicaHealth(True, serving, lag, reason, time.monotonic())

    async def _fit(self) -> bool:
        if self.replica is None:
            return False
        if time.monotonic() - self.health.checked_at >= self.check_every:
            async with self._lock:
                if time.monotonic() - self.health.checked_at >= self.check_every:
                    await self.check()
        return self.health.serving

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session on the replica if it is fit (its connection checked out here), else on
        the primary."""
        if self.replica is not None and await self._fit():
            session = self.replica()
            try:
                await session.connection()
            except UNREACHABLE as exc:
                await session.close()
                self._set(False, None, _unreachable(exc))
            else:
                async with session:
                    yield session
                return
        async with self.primary() as session:
            yield session

    async def aclose(self) -> None:
        if self.engine is not None:
            await self.engine.dispose()


async def replica_health(settings: Settings) -> ReplicaHealth | None:
    """The read replica's state now (for `tasktracker status`); None without DATABASE_READ_URL."""
    if not settings.database_read_url:
        return None
    router = ReadRouter(settings.model_copy(update={"db_pool_size": 1}), async_sessionmaker())
    try:
        return await router.check()
    finally:
        await router.aclose()


def _unreachable(exc: BaseException) -> str:
    """Why the replica is skipped: the error's kind, or what a pooler refused and the fix."""
    return f"unreachable ({pooler_refusal(exc) or type(exc).__name__})"
