"""One EmbeddingService per provider per process, created on first use and checked once."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.embedding import provider_service
from app.embedding.embedding_service import EmbeddingService
from app.embedding.providers import ProviderSpec, build_provider


@dataclass
class ServiceEntry:
    spec: ProviderSpec
    service: EmbeddingService


class EmbeddingRegistry:
    """Reuses provider clients (one HTTP client or model per provider) across tasks and requests."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._entries: dict[str, ServiceEntry] = {}
        self._lock = asyncio.Lock()

    async def get(
        self, session: AsyncSession, provider_id: uuid.UUID | None = None
    ) -> ServiceEntry:
        """The service of a provider (default: the configured default), dimension-checked."""
        key = str(provider_id or "default")
        async with self._lock:
            if key not in self._entries:
                spec = await provider_service.resolve_spec(session, provider_id, self.settings)
                await provider_service.check_fits_column(session, spec)
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
        """Drop a cached service (after its provider changed)."""
        async with self._lock:
            entry = self._entries.pop(str(provider_id or "default"), None)
        if entry is not None:
            await entry.service.aclose()

    async def aclose(self) -> None:
        async with self._lock:
            entries, self._entries = list(self._entries.values()), {}
        for entry in entries:
            await entry.service.aclose()
