"""The embedding domain's per-process objects for the API, behind typed accessors."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.api.deps import get_state
from app.embedding.registry import EmbeddingRegistry


def registry_of(request: Request) -> EmbeddingRegistry:
    """This API process's EmbeddingRegistry, created on first use and closed with the app state."""
    holder = request.app.state
    registry: EmbeddingRegistry | None = getattr(holder, "embedding_registry", None)
    if registry is None:
        state = get_state(request)
        registry = EmbeddingRegistry(state.settings)
        holder.embedding_registry = registry
        state.on_close(registry.aclose)
    return registry


RegistryDep = Annotated[EmbeddingRegistry, Depends(registry_of)]
