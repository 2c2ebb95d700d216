"""Per-process API state: engines, sessions, the read router, the broker client, rate limits.

Only infrastructure lives here, so the domains' routes may depend on it; a domain keeps its own
per-process objects behind its own accessor (app.embedding.dependencies.registry_of).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from taskiq import AsyncBroker

from app.api.limits import RateLimiter
from app.broker import build_broker
from app.core.config import Settings
from app.db import create_engine, session_factory
from app.replica import ReadRouter

logger = logging.getLogger(__name__)


class AppState:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.engine: AsyncEngine = create_engine(settings=settings)
        self.sessions: async_sessionmaker[AsyncSession] = session_factory(self.engine)
        # Searches on the primary take their connections from a pool of their own, whose
        # connections start with the index-only plans a search wants (app.db.create_engine).
        self.search_engine: AsyncEngine = create_engine(settings=settings, search=True)
        self.reads = ReadRouter(settings, session_factory(self.search_engine))
        # A client of its own, on this app's NATS_URL and stream: the process-wide broker is the
        # worker's. Shared by every app of a process (the tests' many), a client left connected
        # on a closed event loop made each publish of the next app wait out its retries.
        self.broker: AsyncBroker = build_broker(settings)
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self.limiter = RateLimiter.from_settings(settings)
        self.broker_ready = False

    async def open(self) -> None:
        try:
            await self.broker.startup()
            self.broker_ready = True
        except Exception as exc:  # noqa: BLE001 - the API serves reads without a broker
            logger.warning("broker unavailable at startup (%s); rows wait for the sweeper", exc)

    def on_close(self, close: Callable[[], Awaitable[None]]) -> None:
        """Run `close` when the state closes (before the engine is disposed)."""
        self._closers.append(close)

    async def close(self) -> None:
        if self.broker_ready:
            await self.broker.shutdown()
        for close in reversed(self._closers):
            await close()
        await self.reads.aclose()
        await self.search_engine.dispose()
        await self.engine.dispose()
