"""What every embedding provider is: a name, a model, a dimension, limits, and `embed`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from app.core.enums import ProviderType

Kind = Literal["document", "query"]


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
