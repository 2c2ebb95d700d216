"""What a process that runs tasks keeps between task runs: the engine and embedding services."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings, get_settings
from app.db import create_engine, session_factory
from app.embedding.registry import EmbeddingRegistry, ServiceEntry


class TaskRuntime:
    """Lazily opened, shared by every task run in this process."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self._engine: AsyncEngine | None = None
        self.registry = EmbeddingRegistry(self.settings)

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            self._engine = create_engine(settings=self.settings)
        return self._engine

    async def embedding(self, provider_id: str | None) -> ServiceEntry:
        """The embedding service of a provider (default: the configured default)."""
        async with session_factory(self.engine)() as session:
            return await self.registry.get(session, uuid.UUID(provider_id) if provider_id else None)

    async def aclose(self) -> None:
        await self.registry.aclose()
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None


runtime = TaskRuntime()
