"""OpenAI and any OpenAI-compatible server (vLLM, llama.cpp, LM Studio, Ollama's /v1)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from app.core.errors import DimensionMismatchError, EmbeddingProviderError
from app.core.netpolicy import guarded_client, policy_refusal
from app.embedding.providers.base import Kind, ProviderSpec, redact, retry_after_header
from app.embedding.providers.errors import status_error

DEFAULT_MODEL = "text-embedding-3-small"


class OpenAIProvider:
    """One AsyncOpenAI client per provider, reused; base64 vectors decoded with numpy."""

    max_batch_size = 2048
    max_tokens_per_input: int | None = 8191
    max_tokens_per_request: int | None = 300_000

    def __init__(self, spec: ProviderSpec):
        import openai  # imported lazily: only this provider needs the SDK

        self.name, self.dimensions = spec.name, spec.dimensions
        self.model = spec.model or DEFAULT_MODEL
        self._openai = openai
        self._key = spec.api_key
        self._client = openai.AsyncOpenAI(
            api_key=spec.api_key or "not-needed",  # local servers take any key
            base_url=spec.base_url,
            timeout=spec.timeout,
            max_retries=0,  # retries are EmbeddingService's, with backoff and Retry-After
            http_client=guarded_client(spec.network, timeout=spec.timeout),
        )
        # Only the text-embedding-3 family can shorten its vectors on request.
        self._dimensions_arg = (
            spec.dimensions if self.model.startswith("text-embedding-3") else None
        )

    async def embed(self, texts: Sequence[str], *, kind: Kind) -> np.ndarray:  # noqa: ARG002
        """One request; float32 rows in input order."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            # The SDK walks every string of `input` through its typed transform (~9 ms for
            # 256 inputs); extra_body is sent as given, so the inputs travel there.
            "input": [],
            "extra_body": {"input": list(texts)},
            "encoding_format": "base64",
        }
        if self._dimensions_arg is not None:
            kwargs["dimensions"] = self._dimensions_arg
        try:
            # The raw response: building the SDK's pydantic models for 256 vectors costs more
            # CPU than everything else here; the JSON is read once, by us.
            raw = await self._client.embeddings.with_raw_response.create(**kwargs)
        except self._openai.APIError as exc:
            raise self._mapped(exc) from None
        return self._decode(_data(raw.http_response.content, self.name))

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.close()

    def _mapped(self, exc: Exception) -> EmbeddingProviderError:
        """The SDK's exception as an EmbeddingProviderError: retryable or not, and why."""
        openai = self._openai
        if isinstance(exc, openai.APIStatusError):  # RateLimit, Authentication, BadRequest, ...
            detail = redact(_error_detail(exc), self._key)
            retry_after = retry_after_header(exc.response.headers)
            return status_error(self.name, exc.status_code, detail, retry_after)
        if isinstance(exc, openai.APITimeoutError):
            return EmbeddingProviderError("request timed out", provider=self.name, retryable=True)
        if isinstance(exc, openai.APIConnectionError):
            refused = policy_refusal(exc)
            if refused is not None:
                return EmbeddingProviderError(refused, provider=self.name, retryable=False)
            cause = type(exc.__cause__ or exc).__name__
            return EmbeddingProviderError(
                f"connection failed: {cause}", provider=self.name, retryable=True
            )
        return EmbeddingProviderError(
            f"unexpected response: {type(exc).__name__}", provider=self.name, retryable=False
        )

    def _decode(self, data: list[dict[str, Any]]) -> np.ndarray:
        """Rows from base64 (or float lists, from servers that ignore encoding_format)."""
        try:
            ordered = sorted(data, key=lambda item: int(item.get("index", 0)))
            rows = [_row(item["embedding"]) for item in ordered]
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error):
            raise EmbeddingProviderError(
                "malformed 'data' in the response", provider=self.name, retryable=False
            ) from None
        lengths = sorted({row.shape[0] for row in rows})
        if len(lengths) > 1:
            raise DimensionMismatchError(
                f"provider {self.name!r} ({self.model}) returned vectors of mixed lengths "
                f"{lengths}, expected {self.dimensions}"
            )
        if not rows:
            return np.empty((0, self.dimensions), dtype=np.float32)
        return np.vstack(rows)


def _data(content: bytes, provider: str) -> list[dict[str, Any]]:
    """The response's "data" list."""
    try:
        data = json.loads(content)["data"]
    except (ValueError, KeyError, TypeError):
        data = None
    if not isinstance(data, list):
        raise EmbeddingProviderError(
            "the response has no 'data' list", provider=provider, retryable=False
        )
    return data


def _row(embedding: str | Sequence[float]) -> np.ndarray:
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype=np.float32)
    return np.asarray(embedding, dtype=np.float32)


def _error_detail(exc: Any) -> str:
    """The server's message: the SDK gives the body's "error" object (or the whole body)."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error")
        message = inner.get("message") if isinstance(inner, dict) else body.get("message")
        return str(message or inner or "")
    return str(body or "")
