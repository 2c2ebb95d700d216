"""Per-process API state: engine, sessions, broker client, embedding services, rate limits."""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.api.limits import RateLimiter
from app.core.config import Settings
from app.db import create_engine, session_factory
from app.embedding.registry import EmbeddingRegistry
from app.replica import ReadRouter
from app.worker.broker import broker

logger = logging.getLogger(__name__)


class AppState:
    def __init__(self, settings: Settings, engine: AsyncEngine | None = None):
        self.settings = settings
        self.engine: AsyncEngine = engine or create_engine(settings=settings)
        self.sessions: async_sessionmaker[AsyncSession] = session_factory(self.engine)
        self.reads = ReadRouter(settings, self.sessions)
        self.registry = EmbeddingRegistry(settings)
        self.limiter = RateLimiter.from_settings(settings)
        self.broker_ready = False

    async def open(self) -> None:
        try:
            await broker.startup()
            self.broker_ready = True
        except Exception as exc:  # noqa: BLE001 - the API serves reads without a broker
            logger.warning("broker unavailable at startup (%s); rows wait for the sweeper", exc)

    async def close(self) -> None:
        if self.broker_ready:
            await broker.shutdown()
        await self.registry.aclose()
        await self.reads.aclose()
        await self.engine.dispose()
