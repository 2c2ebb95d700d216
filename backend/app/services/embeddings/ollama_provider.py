"""Ollama's batch endpoint, POST /api/embed with a list of inputs."""

from __future__ import annotations

from collections.abc import Sequence

import httpx
import numpy as np

from app.core.errors import EmbeddingProviderError
from app.services.embeddings.base import Kind, ProviderSpec
from app.services.embeddings.errors import status_error


def ollama_base(url: str | None) -> str:
    """The server root, whether given as http://host:11434, .../ or .../v1."""
    base = (url or "http://127.0.0.1:11434").rstrip("/")
    return base.removesuffix("/v1").rstrip("/")


class OllamaProvider:
    """One httpx client per provider, reused."""

    max_batch_size = 512
    max_tokens_per_input: int | None = None
    max_tokens_per_request: int | None = None

    def __init__(self, spec: ProviderSpec):
        self.name, self.model, self.dimensions = spec.name, spec.model, spec.dimensions
        # Ollama itself needs no key; one behind an authenticating proxy gets it as a bearer token.
        headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
        self._client = httpx.AsyncClient(
            base_url=ollama_base(spec.base_url), timeout=spec.timeout, headers=headers
        )

    async def embed(self, texts: Sequence[str], *, kind: Kind) -> np.ndarray:  # noqa: ARG002
        try:
            response = await self._client.post(
                "/api/embed", json={"model": self.model, "input": list(texts)}
            )
        except httpx.TimeoutException:
            raise EmbeddingProviderError(
                "request timed out", provider=self.name, retryable=True
            ) from None
        except httpx.TransportError as exc:
            raise EmbeddingProviderError(
                f"connection failed: {type(exc).__name__}", provider=self.name, retryable=True
            ) from None
        if response.status_code >= 400:
            detail = response.text[:300]
            raise status_error(
                self.name, response.status_code, detail, response.headers.get("retry-after")
            )
        vectors = response.json().get("embeddings")
        if not isinstance(vectors, list) or len(vectors) != len(texts):
            raise EmbeddingProviderError(
                f"returned no embeddings list for {len(texts)} inputs",
                provider=self.name,
                retryable=False,
            )
        try:
            return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)
        except ValueError:
            raise EmbeddingProviderError(
                "returned vectors of mixed lengths", provider=self.name, retryable=False
            ) from None

    async def aclose(self) -> None:
        await self._client.aclose()
