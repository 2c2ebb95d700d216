"""What a process that runs tasks keeps between task runs: the engine and embedding services."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings, get_settings
from app.db import create_engine, session_factory
from app.services import provider_service
from app.services.embedding_service import EmbeddingService
from app.services.embeddings import ProviderSpec, build_provider


@dataclass
class ServiceEntry:
    spec: ProviderSpec
    service: EmbeddingService


class TaskRuntime:
    """Lazily opened, shared by every task run in this process."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self._engine: AsyncEngine | None = None
        self._services: dict[str, ServiceEntry] = {}
        self._lock = asyncio.Lock()

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            self._engine = create_engine(settings=self.settings)
        return self._engine

    async def embedding(self, provider_id: str | None) -> ServiceEntry:
        """The embedding service of a provider (default: the configured default)."""
        key = provider_id or "default"
        async with self._lock:
            if key not in self._services:
                async with session_factory(self.engine)() as session:
                    spec = await provider_service.resolve_spec(
                        session, uuid.UUID(provider_id) if provider_id else None, self.settings
                    )
                    await provider_service.check_fits_column(session, spec)
                self._services[key] = ServiceEntry(spec, self._service(spec))
            return self._services[key]

    def _service(self, spec: ProviderSpec) -> EmbeddingService:
        settings = self.settings
        return EmbeddingService(
            build_provider(spec),
            batch_size=settings.embedding_batch_size,
            max_concurrency=settings.embedding_max_concurrency,
            max_retries=settings.embedding_max_retries,
            query_cache_size=settings.query_cache_size,
        )

    async def aclose(self) -> None:
        for entry in self._services.values():
            await entry.service.aclose()
        self._services.clear()
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None


runtime = TaskRuntime()
