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
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from app.core.errors import DimensionMismatchError, EmbeddingProviderError, ValidationError
from app.core.metrics import observe_provider_call
from app.embedding.providers import EmbeddingProvider, Kind
from app.embedding.providers.token_count import count_tokens, truncate

logger = logging.getLogger(__name__)
T = TypeVar("T")
BAD_INPUT_STATUS = {400, 413, 422}
# A provider asking us to wait longer than this is treated as down for now: the caller retries
# the batch later instead of holding a worker asleep.
MAX_RETRY_AFTER = 60.0
EMPTY_TEXT = "empty text"
# Below this many UTF-8 bytes the byte count is a good enough token bound (a token is >= 1 byte).
_EXACT_COUNT_BYTES = 2048


@dataclass
class EmbedOutcome:
    """One input's result: a vector, or the reason there is none."""

    vector: np.ndarray | None
    error: str | None = None
    truncated: bool = False


@dataclass(frozen=True)
class _Item:
    index: int
    text: str
    tokens: int  # an upper bound, for the per-request budget


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
        self._semaphore = asyncio.Semaphore(max(1, max_concurrency))
        self._cache: OrderedDict[tuple[str, str, str], np.ndarray] = OrderedDict()
        self._cache_size = query_cache_size
        self._sleep = sleep

    @property
    def model(self) -> str:
        """The provider's model name."""
        return self.provider.model

    def check_dimensions(self, column_dimensions: int) -> None:
        """Refuse a provider whose vectors do not fit the vector(N) column, naming the fix."""
        dims = self.provider.dimensions
        if dims != column_dimensions:
            raise DimensionMismatchError(
                f"provider {self.provider.name!r} ({self.provider.model}) returns {dims}-dimensional "
                f"vectors but the active embedding column holds {column_dimensions}. Fix: move "
                f"to it online, keeping every row, with `tasktracker embeddings switch --provider "
                f"{self.provider.name}`, or configure a provider/model that returns "
                f"{column_dimensions} dimensions."
            )

    async def embed_documents(self, texts: Sequence[str]) -> list[EmbedOutcome]:
        """One outcome per text, in order; raises EmbeddingProviderError only when the provider fails as a whole."""
        began = time.perf_counter()
        outcomes = [EmbedOutcome(None) for _ in texts]
        items: list[_Item] = []
        for index, text in enumerate(texts):
            if not text or text.isspace():
                outcomes[index].error = EMPTY_TEXT
                continue
            cleaned, outcomes[index].truncated, tokens = self._prepare(text)
            items.append(_Item(index, cleaned, tokens))
        batches = self._batches(items)
        results = await _all_or_none(self._embed_isolating(batch, "document") for batch in batches)
        for batch, result in zip(batches, results, strict=True):
            for item, (vector, error) in zip(batch, result, strict=True):
                outcomes[item.index].vector, outcomes[item.index].error = vector, error
        logger.debug(
            "%s: %d texts, %d sent in %d requests, %d failed, %d truncated, %.3fs",
            self.provider.name,
            len(texts),
            len(items),
            len(batches),
            sum(o.error is not None for o in outcomes),
            sum(o.truncated for o in outcomes),
            time.perf_counter() - began,
        )
        return outcomes

    async def embed_query(self, text: str) -> np.ndarray:
        """The vector of a search query, from a small LRU when asked before."""
        if not text or text.isspace():
            raise ValidationError("the query is empty")
        key = (self.provider.name, self.provider.model, text)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        cleaned, _, _ = self._prepare(text)
        vector: np.ndarray = (await self._request([cleaned], "query"))[0]
        vector.flags.writeable = False  # shared through the cache
        if self._cache_size > 0:
            self._cache[key] = vector
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return vector

    async def aclose(self) -> None:
        """Close the provider's clients."""
        await self.provider.aclose()

    # -- batching ------------------------------------------------------------------------

    def _prepare(self, text: str) -> tuple[str, bool, int]:
        """The text to send (cut to the per-input limit), whether it was cut, its token bound."""
        limit = self.provider.max_tokens_per_input
        size = len(text.encode())
        if limit is not None and size > limit:
            text, cut = truncate(text, limit)
            if cut:
                logger.debug("%s: an input over %d tokens truncated", self.provider.name, limit)
                return text, True, limit
        if size < _EXACT_COUNT_BYTES or self.provider.max_tokens_per_request is None:
            return text, False, size
        return text, False, count_tokens(text)

    def _batches(self, items: list[_Item]) -> list[list[_Item]]:
        """Consecutive runs within the count limit and the per-request token budget."""
        budget = self.provider.max_tokens_per_request
        batches: list[list[_Item]] = []
        current: list[_Item] = []
        used = 0
        for item in items:
            full = len(current) >= self.batch_size
            if current and (full or (budget is not None and used + item.tokens > budget)):
                batches.append(current)
                current, used = [], 0
            current.append(item)
            used += item.tokens
        if current:
            batches.append(current)
        return batches

    # -- requests ------------------------------------------------------------------------

    async def _embed_isolating(
        self, batch: list[_Item], kind: Kind
    ) -> list[tuple[np.ndarray | None, str | None]]:
        """Vectors for a batch; inputs the provider rejects are found by bisection and reported."""
        try:
            vectors = await self._request([item.text for item in batch], kind)
        except EmbeddingProviderError as exc:
            if exc.status not in BAD_INPUT_STATUS:
                raise
            if len(batch) == 1:
                return [(None, exc.message)]
            middle = len(batch) // 2
            left, right = await _all_or_none(
                [
                    self._embed_isolating(batch[:middle], kind),
                    self._embed_isolating(batch[middle:], kind),
                ]
            )
            return left + right
        return [(vector, None) for vector in vectors]

    async def _request(self, texts: list[str], kind: Kind) -> np.ndarray:
        """One provider call, retried while retryable, validated."""
        attempt = 0
        while True:
            try:
                async with self._semaphore:
                    vectors = await self._timed_embed(texts, kind)
                return self._validated(vectors, len(texts))
            except EmbeddingProviderError as exc:
                delay = self._retry_delay(exc, attempt + 1)
                if delay is None:
                    raise
                attempt += 1
                logger.warning(
                    "%s; retry %d/%d in %.2fs", exc.message, attempt, self.max_retries, delay
                )
                await self._sleep(delay)

    async def _timed_embed(self, texts: list[str], kind: Kind) -> np.ndarray:
        """The provider call, counted and timed for /metrics."""
        began, status, ok = time.perf_counter(), None, False
        try:
            vectors = await self.provider.embed(texts, kind=kind)
            ok = True
            return vectors
        except EmbeddingProviderError as exc:
            status = exc.status
            raise
        finally:
            seconds = time.perf_counter() - began
            observe_provider_call(self.provider.name, kind, len(texts), seconds, status, ok)

    def _retry_delay(self, exc: EmbeddingProviderError, attempt: int) -> float | None:
        """Seconds to wait before `attempt`, or None to give up now."""
        if not exc.retryable or attempt > self.max_retries:
            return None
        if exc.retry_after is not None and exc.retry_after > MAX_RETRY_AFTER:
            return None
        # Full jitter: uniform in [0, min(cap, base * 2^n)], so retrying clients spread out.
        backoff = random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))
        return max(backoff, exc.retry_after or 0.0)

    def _validated(self, vectors: np.ndarray, count: int) -> np.ndarray:
        """The vectors as float32 (count, dimensions), or DimensionMismatchError; never padded."""
        vectors = np.asarray(vectors, dtype=np.float32)
        expected = self.provider.dimensions
        label = f"provider {self.provider.name!r} ({self.provider.model})"
        rows = vectors.shape[0] if vectors.ndim else 0
        if vectors.ndim != 2 or rows != count:
            raise DimensionMismatchError(
                f"{label} returned {rows} vectors for {count} inputs, expected one per input"
            )
        if vectors.shape[1] != expected:
            raise DimensionMismatchError(
                f"{label} returned {vectors.shape[1]}-dimensional vectors, expected {expected}. "
                "Fix: configure the model's real dimension (another dimension is moved to "
                "online with `tasktracker embeddings switch`); vectors are never padded or cut."
            )
        return vectors


async def _all_or_none(coros: Iterable[Awaitable[T]]) -> list[T]:
    """Run concurrently; on the first failure cancel the rest (unlike gather) and raise it."""
    tasks = [asyncio.ensure_future(coro) for coro in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
