"""EmbeddingService against OpenAI- and Ollama-compatible stub servers over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from app.core.enums import ProviderType
from app.core.errors import DimensionMismatchError, EmbeddingProviderError
from app.services.embedding_service import EmbeddingService
from app.services.embeddings import ProviderSpec, build_provider
from tests.stubs.openai_stub import OpenAIStub

DIMS = 64
KEY = "sk-test-0123456789abcdef"


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(dims=DIMS, api_key=KEY) as server:
        yield server


def service(
    stub: OpenAIStub,
    *,
    kind: str = "openai",
    key: str = KEY,
    timeout: float = 5.0,
    **kwargs: object,
) -> EmbeddingService:
    base = stub.base_url if kind == "openai" else stub.ollama_url
    spec = ProviderSpec(
        ProviderType(kind), f"stub-{kind}", "text-embedding-3-small", DIMS, base, key, timeout
    )
    options: dict[str, object] = {"base_delay": 0.01, "max_delay": 0.05}
    options.update(kwargs)
    return EmbeddingService(build_provider(spec), **options)  # type: ignore[arg-type]


async def test_vectors_come_back_in_input_order(stub: OpenAIStub) -> None:
    texts = [f"text number {i}" for i in range(50)]
    svc = service(stub)
    outcomes = await svc.embed_documents(texts)
    await svc.aclose()
    for text, outcome in zip(texts, outcomes, strict=True):
        assert outcome.vector is not None
        np.testing.assert_allclose(outcome.vector, stub.vector(text), rtol=1e-6)


async def test_batches_are_split_by_count(stub: OpenAIStub) -> None:
    svc = service(stub, batch_size=16)
    outcomes = await svc.embed_documents([f"t{i}" for i in range(100)])
    await svc.aclose()
    assert all(o.vector is not None for o in outcomes)
    stats = stub.stats()
    assert stats["requests"] == 7 and stats["max_batch"] == 16


async def test_batches_are_split_by_tokens_per_request(stub: OpenAIStub) -> None:
    svc = service(stub, batch_size=2048)
    svc.provider.max_tokens_per_request = 3000  # type: ignore[misc]
    long_text = "deploy " * 700  # ~700 tokens each
    outcomes = await svc.embed_documents([f"{i} {long_text}" for i in range(10)])
    await svc.aclose()
    assert all(o.vector is not None for o in outcomes)
    assert stub.stats()["max_batch"] <= 4 and stub.stats()["requests"] >= 3


async def test_over_long_input_is_truncated_not_rejected(stub: OpenAIStub) -> None:
    svc = service(stub)
    outcome = (await svc.embed_documents(["word " * 9000]))[0]
    await svc.aclose()
    assert outcome.vector is not None and outcome.truncated


async def test_429_with_retry_after_is_honoured(stub: OpenAIStub) -> None:
    stub.script({"status": 429, "retry_after": 1})
    svc = service(stub)
    began = time.perf_counter()
    outcomes = await svc.embed_documents(["hello"])
    elapsed = time.perf_counter() - began
    await svc.aclose()
    assert outcomes[0].vector is not None
    assert elapsed >= 0.95 and stub.stats()["requests"] == 2


@pytest.mark.parametrize("step", [500, 503, {"hang": 1.5}])
async def test_server_errors_and_timeouts_are_retried(stub: OpenAIStub, step: object) -> None:
    stub.script(step)
    svc = service(stub, timeout=0.5)
    outcomes = await svc.embed_documents(["hello"])
    await svc.aclose()
    assert outcomes[0].vector is not None and stub.stats()["requests"] == 2


async def test_retries_stop_at_the_bound(stub: OpenAIStub) -> None:
    stub.script(*[500] * 10)
    svc = service(stub, max_retries=3)
    with pytest.raises(EmbeddingProviderError) as info:
        await svc.embed_documents(["hello"])
    await svc.aclose()
    assert info.value.retryable and stub.stats()["requests"] == 4


async def test_401_fails_fast_naming_the_provider_without_the_key(stub: OpenAIStub) -> None:
    svc = service(stub, key="sk-wrong-key-9876543210")
    with pytest.raises(EmbeddingProviderError) as info:
        await svc.embed_documents(["hello"])
    await svc.aclose()
    assert stub.stats()["requests"] == 0  # refused before counting: one attempt, no retry
    assert "stub-openai" in str(info.value) and "401" in str(info.value)
    assert "sk-wrong-key" not in str(info.value) and not info.value.retryable


async def test_wrong_dimension_is_a_clear_error_and_never_padded(stub: OpenAIStub) -> None:
    stub.script({"dims": DIMS // 2})
    svc = service(stub)
    with pytest.raises(DimensionMismatchError) as info:
        await svc.embed_documents(["hello"])
    await svc.aclose()
    assert f"returned {DIMS // 2}-dimensional" in str(info.value) and f"expected {DIMS}" in str(
        info.value
    )


def test_dimension_check_names_both_numbers_and_the_fix(stub: OpenAIStub) -> None:
    svc = service(stub)
    with pytest.raises(DimensionMismatchError) as info:
        svc.check_dimensions(1536)
    assert (
        "64" in info.value.message
        and "1536" in info.value.message
        and "EMBEDDING_DIMENSIONS" in info.value.message
    )


async def test_empty_text_is_never_sent_and_gets_a_reason(stub: OpenAIStub) -> None:
    svc = service(stub)
    outcomes = await svc.embed_documents(["", "real text", "   \n"])
    await svc.aclose()
    assert [o.error is not None for o in outcomes] == [True, False, True]
    assert stub.stats()["text_counts"] == {"real text": 1}


async def test_a_rejected_input_is_isolated_and_the_rest_embedded(stub: OpenAIStub) -> None:
    stub.reject_substring("POISON")
    texts = [f"fine {i}" for i in range(15)] + ["POISON pill"]
    svc = service(stub)
    outcomes = await svc.embed_documents(texts)
    await svc.aclose()
    assert [o.vector is None for o in outcomes] == [False] * 15 + [True]
    assert "400" in (outcomes[-1].error or "")


async def test_concurrency_is_bounded(stub: OpenAIStub) -> None:
    stub.set_latency(ms=50)
    svc = service(stub, batch_size=5, max_concurrency=3)
    await svc.embed_documents([f"t{i}" for i in range(60)])
    await svc.aclose()
    assert stub.stats()["max_concurrent"] == 3


@pytest.mark.parametrize("suffix", ["", "/", "/v1"])
async def test_ollama_batch_endpoint_with_any_base_url(stub: OpenAIStub, suffix: str) -> None:
    spec = ProviderSpec(
        ProviderType.ollama, "stub-ollama", "nomic-embed-text", DIMS, stub.ollama_url + suffix, KEY
    )
    svc = EmbeddingService(build_provider(spec))
    outcomes = await svc.embed_documents(["a", "b", "c"])
    await svc.aclose()
    np.testing.assert_allclose(outcomes[2].vector, stub.vector("c"), rtol=1e-6)  # type: ignore[arg-type]
    assert stub.stats()["requests"] == 1


async def test_query_vectors_are_cached(stub: OpenAIStub) -> None:
    svc = service(stub)
    first = await svc.embed_query("bug fix")
    second = await svc.embed_query("bug fix")
    await svc.aclose()
    assert stub.stats()["requests"] == 1
    np.testing.assert_array_equal(first, second)
