"""One EmbeddingService per provider per process, created on first use and checked once.

Provider and space changes reach a running process through `embedding_config.version`
(a trigger raises it): each `get`/`for_space` looks at it at most every `CONFIG_CHECK_SECONDS`,
and when it moved every cached service is dropped (closed a minute later, so a task still using
one finishes) and built again from the rows as they are now: a new key, base URL or model is
used within seconds, without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.embedding import provider_service
from app.embedding.embedding_service import EmbeddingService
from app.embedding.providers import ProviderSpec, build_provider
from app.embedding.spaces import Space, SpaceBook, spec_for_space
from app.models.provider import LLMProvider

CLOSE_AFTER_SECONDS = 60.0


@dataclass
class ServiceEntry:
    spec: ProviderSpec
    service: EmbeddingService


class EmbeddingRegistry:
    """Reuses provider clients (one HTTP client or model per provider) across tasks and requests."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.book = SpaceBook(ttl=settings.config_check_seconds)
        self._entries: dict[str, ServiceEntry] = {}
        self._entries_version: int | None = None  # the config version the entries were built at
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()

    async def sync(self, session: AsyncSession) -> None:
        """Drop every cached service when the config version moved."""
        await self.book.refresh(session)
        if self.book.version == self._entries_version:
            return
        async with self._lock:
            stale, self._entries = list(self._entries.values()), {}
            self._entries_version = self.book.version
        for entry in stale:
            self._close_later(entry)

    async def get(
        self, session: AsyncSession, provider_id: uuid.UUID | None = None
    ) -> ServiceEntry:
        """The service of a provider (default: the active messages space's), checked."""
        await self.sync(session)
        if provider_id is None:
            return await self.for_space(session, await self.book.active(session, "messages"))
        key = str(provider_id)
        async with self._lock:
            if key not in self._entries:
                spec = await provider_service.resolve_spec(session, provider_id, self.settings)
                await provider_service.check_fits_column(session, spec)
                self._entries[key] = ServiceEntry(spec, self.build(spec))
            return self._entries[key]

    async def for_space(self, session: AsyncSession, space: Space) -> ServiceEntry:
        """The service that makes (and embeds queries for) this space's vectors."""
        await self.sync(session)
        key = f"space:{space.provider_id or space.provider_name}:{space.model}:{space.dimensions}"
        async with self._lock:
            if key not in self._entries:
                row = (
                    await session.get(LLMProvider, space.provider_id)
                    if space.provider_id is not None
                    else None
                )
                from_settings = provider_service.spec_from_settings(self.settings)
                spec = spec_for_space(space, row, self.settings, from_settings)
                self._entries[key] = ServiceEntry(spec, self.build(spec))
            return self._entries[key]

    def build(self, spec: ProviderSpec) -> EmbeddingService:
        """A service for `spec` with the configured batching, concurrency and retries."""
        settings = self.settings
        return EmbeddingService(
            build_provider(spec),
            batch_size=settings.embedding_batch_size,
            max_concurrency=settings.embedding_max_concurrency,
            max_retries=settings.embedding_max_retries,
            query_cache_size=settings.query_cache_size,
        )

    async def forget(self, provider_id: uuid.UUID | None = None) -> None:
        """Drop cached services at once (after this process changed a provider)."""
        async with self._lock:
            if provider_id is None:
                stale, self._entries = list(self._entries.values()), {}
            else:
                entry = self._entries.pop(str(provider_id), None)
                stale = [entry] if entry is not None else []
        self.book.version = None  # read the spaces again on the next use
        for entry in stale:
            self._close_later(entry)

    def _close_later(self, entry: ServiceEntry) -> None:
        async def close() -> None:
            await asyncio.sleep(CLOSE_AFTER_SECONDS)
            with contextlib.suppress(Exception):
                await entry.service.aclose()

        try:
            task = asyncio.get_running_loop().create_task(close())
        except RuntimeError:
            return
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        async with self._lock:
            entries, self._entries = list(self._entries.values()), {}
        for task in list(self._closing):
            task.cancel()
        for entry in entries:
            await entry.service.aclose()
