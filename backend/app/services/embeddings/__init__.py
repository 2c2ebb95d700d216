"""Embedding providers behind one small protocol."""

from __future__ import annotations

from app.core.enums import ProviderType
from app.services.embeddings.base import EmbeddingProvider, Kind, ProviderSpec

__all__ = ["EmbeddingProvider", "Kind", "ProviderSpec", "build_provider"]


def build_provider(spec: ProviderSpec) -> EmbeddingProvider:
    """The provider for a spec; SDKs and models are imported only by the one that needs them."""
    if spec.type is ProviderType.openai:
        from app.services.embeddings.openai_provider import OpenAIProvider

        return OpenAIProvider(spec)
    if spec.type is ProviderType.ollama:
        from app.services.embeddings.ollama_provider import OllamaProvider

        return OllamaProvider(spec)
    from app.services.embeddings.local_provider import LocalProvider

    return LocalProvider(spec)
