"""Embedding providers behind one small protocol."""

from __future__ import annotations

from app.core.enums import ProviderType
from app.embedding.providers.base import EmbeddingProvider, Kind, ProviderSpec

__all__ = ["EmbeddingProvider", "Kind", "ProviderSpec", "build_provider"]


def build_provider(spec: ProviderSpec) -> EmbeddingProvider:
    """The provider for a spec; SDKs and models are imported only by the one that needs them."""
    if spec.type is ProviderType.openai:
        from app.embedding.providers.openai_provider import OpenAIProvider

        return OpenAIProvider(spec)
    if spec.type is ProviderType.ollama:
        from app.embedding.providers.ollama_provider import OllamaProvider

        return OllamaProvider(spec)
    from app.embedding.providers.local_provider import LocalProvider

    return LocalProvider(spec)
