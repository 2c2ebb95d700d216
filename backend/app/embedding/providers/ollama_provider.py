"""Ollama's batch endpoint, POST /api/embed with a list of inputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from app.core.errors import DimensionMismatchError, EmbeddingProviderError
from app.core.netpolicy import guarded_client, policy_refusal
from app.embedding.providers.base import Kind, ProviderSpec, redact, retry_after_header
from app.embedding.providers.errors import status_error

DEFAULT_BASE_URL = "http://127.0.0.1:11434"


def ollama_base(url: str | None) -> str:
    """The server root, whether given as http://host:11434, .../ or .../v1."""
    base = (url or DEFAULT_BASE_URL).rstrip("/")
    return base.removesuffix("/v1").rstrip("/")


class OllamaProvider:
    """One httpx client per provider, reused."""

    max_batch_size = 512
    max_tokens_per_input: int | None = None  # Ollama truncates to the model's context itself
    max_tokens_per_request: int | None = None

    def __init__(self, spec: ProviderSpec):
        self.name, self.model, self.dimensions = spec.name, spec.model, spec.dimensions
        self._key = spec.api_key
        # Ollama itself needs no key; one behind an authenticating proxy gets it as a bearer token.
        headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
        self._client: httpx.AsyncClient = guarded_client(
            spec.network, base_url=ollama_base(spec.base_url), timeout=spec.timeout, headers=headers
        )

    async def embed(self, texts: Sequence[str], *, kind: Kind) -> np.ndarray:  # noqa: ARG002
        """One request; float32 rows in input order."""
        body = {"model": self.model, "input": list(texts)}
        try:
            response = await self._client.post("/api/embed", json=body)
        except httpx.TimeoutException:
            raise EmbeddingProviderError(
                "request timed out", provider=self.name, retryable=True
            ) from None
        except httpx.TransportError as exc:
            refused = policy_refusal(exc)
            if refused is not None:
                raise EmbeddingProviderError(refused, provider=self.name, retryable=False) from None
            raise EmbeddingProviderError(
                f"connection failed: {type(exc).__name__}", provider=self.name, retryable=True
            ) from None
        if response.status_code >= 400:
            detail = redact(_error_detail(response), self._key)
            retry_after = retry_after_header(response.headers)
            raise status_error(self.name, response.status_code, detail, retry_after)
        return self._decode(response)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()

    def _decode(self, response: httpx.Response) -> np.ndarray:
        try:
            vectors = response.json().get("embeddings")
        except (ValueError, AttributeError):
            vectors = None
        if not isinstance(vectors, list):
            raise EmbeddingProviderError(
                "the response has no 'embeddings' list", provider=self.name, retryable=False
            )
        if not vectors:
            return np.empty((0, self.dimensions), dtype=np.float32)
        try:
            return np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
        except (ValueError, TypeError):
            lengths = sorted({len(v) if isinstance(v, list) else 0 for v in vectors})
            raise DimensionMismatchError(
                f"provider {self.name!r} ({self.model}) returned vectors of mixed lengths "
                f"{lengths}, expected {self.dimensions}"
            ) from None


def _error_detail(response: httpx.Response) -> str:
    """Ollama's {"error": "..."} message, or the start of the body."""
    try:
        body: Any = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("message") or error)
        return str(error or body)
    return str(body)[:300]
