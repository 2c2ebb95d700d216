"""What a process that runs tasks keeps between task runs: the engine and embedding services."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings, get_settings
from app.db import create_engine, session_factory
from app.embedding.entities import Entity
from app.embedding.recovery import Recovery
from app.embedding.registry import EmbeddingRegistry, ServiceEntry
from app.embedding.spaces import Space, active_of, space_for_provider


class TaskRuntime:
    """Lazily opened, shared by every task run in this process."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self._engine: AsyncEngine | None = None
        self.registry = EmbeddingRegistry(self.settings)
        # Set by the worker when it stops: waits on a dependency end (see DbRetry.stop).
        self.stopping: asyncio.Event | None = None
        self.recovery = Recovery()

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            self._engine = create_engine(settings=self.settings)
        return self._engine

    async def embedding(self, provider_id: str | None) -> ServiceEntry:
        """The embedding service of a provider (default: the configured default)."""
        async with session_factory(self.engine)() as session:
            return await self.registry.get(session, uuid.UUID(provider_id) if provider_id else None)

    async def for_task(
        self, entity: Entity, provider_id: str | None, space_id: int | None
    ) -> tuple[Space, ServiceEntry] | None:
        """The space a task embeds for and its service; None when that space is retired.

        A task names its space; an older one without a space embeds for the space its
        provider fills (refused unless that is the active or a switch's target), else the
        active one.
        """
        async with session_factory(self.engine)() as session:
            await self.registry.sync(session)
            spaces = await self.registry.book.spaces(session)
            if space_id is not None:
                space = await self.registry.book.by_id(session, space_id)
                if space is None:
                    return None
            elif provider_id is not None:
                space = space_for_provider(spaces, entity.name, uuid.UUID(provider_id))
            else:
                space = active_of(spaces, entity.name)
            return space, await self.registry.for_space(session, space)

    async def aclose(self) -> None:
        await self.registry.aclose()
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None


runtime = TaskRuntime()
