"""EmbeddingService: texts in, validated vectors out, for any provider.

Written once for every provider: batching by the provider's limits (inputs and tokens per
request, tokens per input), a bounded number of requests in flight, retries with exponential
backoff and full jitter on what is retryable (429, 5xx, timeouts, connection errors) honouring
Retry-After, isolation of inputs a provider rejects (a 400 on a batch is bisected so one bad row
never fails the others), exact dimension checks (never padding), and an LRU of query vectors.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from app.core.errors import DimensionMismatchError, EmbeddingProviderError, ValidationError
from app.services.embeddings import EmbeddingProvider, Kind
from app.services.embeddings.tokens import count_tokens, truncate

logger = logging.getLogger(__name__)
BAD_INPUT_STATUS = {400, 413, 422}
# A provider asking us to wait longer than this is treated as down for now: the task retries later.
MAX_RETRY_AFTER = 60.0


@dataclass
class EmbedOutcome:
    """One input's result: a vector, or the reason there is none."""

    vector: np.ndarray | None
    error: str | None = None
    truncated: bool = False


class EmbeddingService:
    """Batches, retries and validates calls to one provider."""

    def __init__(
        self,
        provider: EmbeddingProvider,
        *,
        batch_size: int = 256,
        max_concurrency: int = 4,
        max_retries: int = 5,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        query_cache_size: int = 1024,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self.provider = provider
        self.batch_size = max(1, min(batch_size, provider.max_batch_size))
        self.max_retries = max_retries
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._cache: OrderedDict[tuple[str, str, str], np.ndarray] = OrderedDict()
        self._cache_size = query_cache_size
        self._sleep = sleep

    @property
    def model(self) -> str:
        return self.provider.model

    def check_dimensions(self, column_dimensions: int) -> None:
        """Refuse a provider whose vectors do not fit the vector(N) column, naming the fix."""
        dims = self.provider.dimensions
        if dims != column_dimensions:
            raise DimensionMismatchError(
                f"provider {self.provider.name!r} ({self.provider.model}) returns {dims}-dimensional "
                f"vectors but the database column is vector({column_dimensions}). Fix: set "
                f"EMBEDDING_DIMENSIONS={dims} and recreate the database (alembic downgrade base && "
                f"alembic upgrade head), or configure a provider/model that returns {column_dimensions}."
            )

    async def embed_documents(self, texts: Sequence[str]) -> list[EmbedOutcome]:
        """One outcome per text, in order. Raises EmbeddingProviderError only when the provider fails as a whole."""
        outcomes: list[EmbedOutcome] = [EmbedOutcome(None) for _ in texts]
        prepared: list[tuple[int, str]] = []
        for index, text in enumerate(texts):
            if not text or not text.strip():
                outcomes[index].error = "empty text: nothing to embed"
                continue
            cleaned, cut = self._fit(text)
            outcomes[index].truncated = cut
            prepared.append((index, cleaned))
        batches = self._batches(prepared)
        results = await asyncio.gather(
            *(self._embed_isolating(batch, "document") for batch in batches)
        )
        for batch, result in zip(batches, results, strict=True):
            for (index, _), (vector, error) in zip(batch, result, strict=True):
                outcomes[index].vector, outcomes[index].error = vector, error
        return outcomes

    async def embed_query(self, text: str) -> np.ndarray:
        """The vector of a search query, from a small LRU when asked before."""
        if not text or not text.strip():
            raise ValidationError("the query is empty")
        key = (self.provider.name, self.provider.model, text)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        cleaned, _ = self._fit(text)
        vectors = await self._request([cleaned], "query")
        vector: np.ndarray = np.asarray(vectors[0])
        if self._cache_size:
            self._cache[key] = vector
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return vector

    async def aclose(self) -> None:
        await self.provider.aclose()

    # -- batching ------------------------------------------------------------------------

    def _fit(self, text: str) -> tuple[str, bool]:
        limit = self.provider.max_tokens_per_input
        # A token is at least one UTF-8 byte: short texts need no counting at all.
        if limit is None or len(text) <= limit // 4 or len(text.encode()) <= limit:
            return text, False
        cut, truncated = truncate(text, limit)
        if truncated:
            logger.info("input over %d tokens truncated for %s", limit, self.provider.name)
        return cut, truncated

    def _batches(self, items: list[tuple[int, str]]) -> list[list[tuple[int, str]]]:
        budget = self.provider.max_tokens_per_request
        batches: list[list[tuple[int, str]]] = []
        current: list[tuple[int, str]] = []
        used = 0
        for item in items:
            cost = 0 if budget is None else _token_upper_bound(item[1])
            if current and (
                len(current) >= self.batch_size or (budget is not None and used + cost > budget)
            ):
                batches.append(current)
                current, used = [], 0
            current.append(item)
            used += cost
        if current:
            batches.append(current)
        return batches

    # -- requests ------------------------------------------------------------------------

    async def _embed_isolating(
        self, batch: list[tuple[int, str]], kind: Kind
    ) -> list[tuple[np.ndarray | None, str | None]]:
        """Vectors for a batch; inputs the provider rejects are found by bisection and reported."""
        try:
            vectors = await self._request([text for _, text in batch], kind)
        except EmbeddingProviderError as exc:
            if exc.status not in BAD_INPUT_STATUS:
                raise
            if len(batch) == 1:
                return [(None, exc.message)]
            middle = len(batch) // 2
            left, right = await asyncio.gather(
                self._embed_isolating(batch[:middle], kind),
                self._embed_isolating(batch[middle:], kind),
            )
            return left + right
        return [(vector, None) for vector in vectors]

    async def _request(self, texts: list[str], kind: Kind) -> np.ndarray:
        attempt = 0
        while True:
            try:
                async with self._semaphore:
                    vectors = await self.provider.embed(texts, kind=kind)
                return self._validated(vectors, len(texts))
            except EmbeddingProviderError as exc:
                if not exc.retryable or attempt >= self.max_retries:
                    raise
                attempt += 1
                delay = self._delay(attempt, exc.retry_after)
                logger.warning(
                    "%s; retry %d/%d in %.2fs", exc.message, attempt, self.max_retries, delay
                )
                await self._sleep(delay)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))
        return (
            max(backoff, min(retry_after, MAX_RETRY_AFTER)) if retry_after is not None else backoff
        )

    def _validated(self, vectors: np.ndarray, count: int) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        expected = self.provider.dimensions
        if vectors.ndim != 2 or vectors.shape[0] != count:
            raise EmbeddingProviderError(
                f"returned {vectors.shape[0] if vectors.ndim else 0} vectors for {count} inputs",
                provider=self.provider.name,
                retryable=False,
            )
        if vectors.shape[1] != expected:
            raise DimensionMismatchError(
                f"provider {self.provider.name!r} ({self.provider.model}) returned {vectors.shape[1]}-dimensional "
                f"vectors, expected {expected}. Fix: configure the model's real dimension (and a matching "
                "vector(N) column); vectors are never padded or cut."
            )
        return vectors


def _token_upper_bound(text: str) -> int:
    size = len(text.encode())
    # Counting is exact but costs ~25 us a text: only do it when the bound might matter.
    return size if size < 2048 else count_tokens(text)
