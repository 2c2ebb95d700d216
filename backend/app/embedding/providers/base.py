"""What every embedding provider is: a name, a model, a dimension, limits, and `embed`."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from app.core.enums import ProviderType
from app.core.netpolicy import NetworkPolicy

Kind = Literal["document", "query"]

# Key-like tokens a server may echo back in an error body ("Incorrect API key provided: sk-...").
_KEY_LIKE = re.compile(r"\b(?:sk|pk|key|api[-_]?key)[-_][A-Za-z0-9*_\-.]{6,}", re.IGNORECASE)


@dataclass(frozen=True)
class ProviderSpec:
    """Where vectors come from. `api_key` is plain text in memory only and never in repr."""

    type: ProviderType
    name: str
    model: str
    dimensions: int
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 30.0
    # Where its requests may go; the default allows public addresses only.
    network: NetworkPolicy = field(default_factory=NetworkPolicy)


class EmbeddingProvider(Protocol):
    """One request per call; batching, retries and validation live in EmbeddingService."""

    name: str
    model: str
    dimensions: int
    max_batch_size: int
    max_tokens_per_input: int | None
    max_tokens_per_request: int | None

    async def embed(self, texts: Sequence[str], *, kind: Kind) -> np.ndarray:
        """float32 array of shape (len(texts), dimensions), in input order."""
        ...

    async def aclose(self) -> None:
        """Release clients."""
        ...


def redact(text: str, secret: str | None) -> str:
    """`text` (an error body from a server) with the key and anything key-like masked."""
    if secret:
        text = text.replace(secret, "***")
    return _KEY_LIKE.sub("***", text)


def retry_after_header(headers: Mapping[str, str]) -> str | None:
    """Retry-After in seconds (or an HTTP date), also from OpenAI's and Azure's retry-after-ms."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return str(float(millis) / 1000)
        except ValueError:
            pass
    return headers.get("retry-after")
