"""EmbeddingService against OpenAI- and Ollama-compatible stub servers over real HTTP."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from app.core.enums import ProviderType
from app.core.errors import DimensionMismatchError, EmbeddingProviderError, ValidationError
from app.core.netpolicy import NetworkPolicy
from app.embedding.embedding_service import EmbeddingService
from app.embedding.providers import ProviderSpec, build_provider
from testkit.stubs.ollama_stub import OllamaStub
from testkit.stubs.openai_stub import OpenAIStub

DIMS = 64
KEY = "sk-test-0123456789abcdef"
# The stubs listen on 127.0.0.1, which a provider may reach only when it is listed.
STUBS = NetworkPolicy.parse(["127.0.0.1"])
KINDS = ["openai", "ollama"]


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub(dims=DIMS, api_key=KEY) as server:
        yield server


def service(
    stub: OpenAIStub,
    *,
    kind: str = "openai",
    key: str = KEY,
    # Far above any answer of the stub on a loaded machine: exact request counts stay exact.
    timeout: float = 30.0,
    **kwargs: object,
) -> EmbeddingService:
    base = stub.base_url if kind == "openai" else stub.ollama_url
    spec = ProviderSpec(
        ProviderType(kind),
        f"stub-{kind}",
        "text-embedding-3-small",
        DIMS,
        base,
        key,
        timeout,
        network=STUBS,
    )
    options: dict[str, object] = {"base_delay": 0.01, "max_delay": 0.05}
    options.update(kwargs)
    return EmbeddingService(build_provider(spec), **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", KINDS)
async def test_vectors_come_back_in_input_order(stub: OpenAIStub, kind: str) -> None:
    texts = [f"text number {i}" for i in range(50)]
    svc = service(stub, kind=kind, batch_size=8)
    outcomes = await svc.embed_documents(texts)
    await svc.aclose()
    for text, outcome in zip(texts, outcomes, strict=True):
        assert outcome.vector is not None and outcome.vector.dtype == np.float32
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
    svc.provider.max_tokens_per_request = 3000
    long_text = "deploy " * 700  # ~700 tokens each
    outcomes = await svc.embed_documents([f"{i} {long_text}" for i in range(10)])
    await svc.aclose()
    assert all(o.vector is not None for o in outcomes)
    assert stub.stats()["max_batch"] == 4 and stub.stats()["requests"] == 3


async def test_over_long_input_is_truncated_not_rejected(stub: OpenAIStub) -> None:
    svc = service(stub)
    outcomes = await svc.embed_documents(["word " * 9000, "short"])
    await svc.aclose()
    assert outcomes[0].vector is not None and outcomes[0].truncated
    assert not outcomes[1].truncated
    (sent,) = (text for text in stub.stats()["text_counts"] if text.startswith("word"))
    assert len(sent) < len("word " * 9000)


@pytest.mark.parametrize("kind", KINDS)
async def test_429_with_retry_after_is_honoured(stub: OpenAIStub, kind: str) -> None:
    """The retry waits at least the server's Retry-After (load can only make it later)."""
    stub.script({"status": 429, "retry_after": 1})
    svc = service(stub, kind=kind)
    began = time.perf_counter()
    outcomes = await svc.embed_documents(["hello"])
    elapsed = time.perf_counter() - began
    await svc.aclose()
    assert outcomes[0].vector is not None
    assert elapsed >= 0.95 and stub.stats()["requests"] == 2


async def test_retry_after_beyond_the_cap_fails_now_for_a_later_retry(stub: OpenAIStub) -> None:
    """An hour's Retry-After is not slept in the request: it fails at once, carrying the delay."""
    stub.script({"status": 429, "retry_after": 3600})
    svc = service(stub)
    began = time.perf_counter()
    with pytest.raises(EmbeddingProviderError) as info:
        await svc.embed_documents(["hello"])
    await svc.aclose()
    assert time.perf_counter() - began < 60 and stub.stats()["requests"] == 1
    assert info.value.retryable and info.value.retry_after == 3600


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("step", [500, 503])
async def test_server_errors_are_retried_once_each(stub: OpenAIStub, step: int, kind: str) -> None:
    stub.script(step)
    svc = service(stub, kind=kind)
    outcomes = await svc.embed_documents(["hello"])
    await svc.aclose()
    assert outcomes[0].vector is not None and stub.stats()["requests"] == 2


@pytest.mark.parametrize("kind", KINDS)
async def test_a_timed_out_request_is_retried(stub: OpenAIStub, kind: str) -> None:
    """A request the server holds past the client timeout is retried and then succeeds."""
    stub.script({"hang": 8})
    svc = service(stub, kind=kind, timeout=2.0)
    outcomes = await svc.embed_documents(["hello"])
    await svc.aclose()
    # At least one retry; on a starved machine a later answer may time out too and be retried.
    assert outcomes[0].vector is not None and stub.stats()["requests"] >= 2


async def test_retries_stop_at_the_bound(stub: OpenAIStub) -> None:
    stub.script(*[500] * 10)
    svc = service(stub, max_retries=3)
    with pytest.raises(EmbeddingProviderError) as info:
        await svc.embed_documents(["hello"])
    await svc.aclose()
    assert info.value.retryable and info.value.status == 500 and stub.stats()["requests"] == 4


@pytest.mark.parametrize("kind", KINDS)
async def test_401_fails_fast_naming_the_provider_without_the_key(
    stub: OpenAIStub, kind: str
) -> None:
    wrong = "sk-wrong-key-9876543210"
    svc = service(stub, kind=kind, key=wrong)
    with pytest.raises(EmbeddingProviderError) as info:
        await svc.embed_documents(["hello", "world"])
    await svc.aclose()
    assert stub.stats()["requests"] == 1  # one attempt: no retry, no bisection
    message = str(info.value)
    assert f"stub-{kind}" in message and "401" in message and not info.value.retryable
    assert wrong not in message and "9876543210" not in message and wrong not in repr(svc.provider)


@pytest.mark.parametrize("kind", KINDS)
async def test_wrong_dimension_is_a_clear_error_and_never_padded(
    stub: OpenAIStub, kind: str
) -> None:
    stub.script({"dims": DIMS // 2})
    svc = service(stub, kind=kind)
    with pytest.raises(DimensionMismatchError) as info:
        await svc.embed_documents(["hello"])
    await svc.aclose()
    message = str(info.value)
    assert f"stub-{kind}" in message and f"returned {DIMS // 2}-dimensional" in message
    assert f"expected {DIMS}" in message


def test_dimension_check_names_both_numbers_and_the_fix(stub: OpenAIStub) -> None:
    svc = service(stub)
    svc.check_dimensions(DIMS)
    with pytest.raises(DimensionMismatchError) as info:
        svc.check_dimensions(1536)
    message = info.value.message
    assert "returns 64-dimensional" in message and "holds 1536" in message
    # the fix is the online switch, never a command that drops the data
    assert "tasktracker embeddings switch --provider" in message
    assert "alembic downgrade" not in message


async def test_empty_text_is_never_sent_and_gets_a_reason(stub: OpenAIStub) -> None:
    svc = service(stub)
    outcomes = await svc.embed_documents(["", "real text", "   \n"])
    await svc.aclose()
    assert [o.error for o in outcomes] == ["empty text", None, "empty text"]
    assert stub.stats()["text_counts"] == {"real text": 1}


async def test_an_empty_query_is_a_validation_error(stub: OpenAIStub) -> None:
    svc = service(stub)
    with pytest.raises(ValidationError):
        await svc.embed_query("  ")
    await svc.aclose()
    assert stub.stats()["requests"] == 0


@pytest.mark.parametrize("kind", KINDS)
async def test_a_rejected_input_is_isolated_and_the_rest_embedded(
    stub: OpenAIStub, kind: str
) -> None:
    stub.reject_substring("POISON")
    texts = (
        [f"fine {i}" for i in range(15)] + ["POISON pill"] + [f"also fine {i}" for i in range(8)]
    )
    svc = service(stub, kind=kind)
    outcomes = await svc.embed_documents(texts)
    await svc.aclose()
    assert [o.vector is None for o in outcomes] == [False] * 15 + [True] + [False] * 8
    assert "400" in (outcomes[15].error or "") and f"stub-{kind}" in (outcomes[15].error or "")
    np.testing.assert_allclose(outcomes[16].vector, stub.vector("also fine 0"), rtol=1e-6)  # type: ignore[arg-type]
    assert stub.stats()["requests"] <= 2 * 5 + 1  # a bisection, not one request per input


async def test_concurrency_is_bounded(stub: OpenAIStub) -> None:
    """Never more than max_concurrency requests in flight, and requests do overlap."""
    stub.set_latency(ms=300)
    svc = service(stub, batch_size=5, max_concurrency=3)
    await svc.embed_documents([f"t{i}" for i in range(60)])
    await svc.aclose()
    assert 2 <= stub.stats()["max_concurrent"] <= 3


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
async def test_ollama_batch_endpoint_with_any_base_url(suffix: str) -> None:
    with OllamaStub(dims=DIMS) as stub:
        spec = ProviderSpec(
            ProviderType.ollama,
            "stub-ollama",
            "nomic-embed-text",
            DIMS,
            stub.base_url + suffix,
            network=STUBS,
        )
        svc = EmbeddingService(build_provider(spec))
        outcomes = await svc.embed_documents(["a", "b", "c"])
        await svc.aclose()
        np.testing.assert_allclose(outcomes[2].vector, stub.vector("c"), rtol=1e-6)  # type: ignore[arg-type]
        assert stub.stats()["requests"] == 1 and stub.stats()["max_batch"] == 3


async def test_query_vectors_are_cached(stub: OpenAIStub) -> None:
    svc = service(stub)
    first = await svc.embed_query("bug fix")
    second = await svc.embed_query("bug fix")
    await svc.embed_query("another query")
    await svc.aclose()
    assert stub.stats()["requests"] == 2
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, stub.vector("bug fix"), rtol=1e-6)


async def test_a_stub_process_is_driven_over_http() -> None:
    command = [sys.executable, "-m", "testkit.stubs.openai_stub", "--port", "0", "--dims", "32"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        base_url = process.stdout.readline().strip()
        root = base_url.removesuffix("/v1")
        async with httpx.AsyncClient(base_url=root) as client:
            control = {"script": [{"status": 503}], "latency_ms": 5, "api_key": KEY}
            (await client.post("/_stub/control", json=control)).raise_for_status()
            spec = ProviderSpec(
                ProviderType.openai,
                "proc",
                "text-embedding-3-small",
                32,
                base_url,
                KEY,
                network=STUBS,
            )
            svc = EmbeddingService(build_provider(spec), base_delay=0.01)
            outcomes = await svc.embed_documents(["one", "two"])
            await svc.aclose()
            stats = (await client.get("/_stub/stats")).json()
        assert all(o.vector is not None for o in outcomes)
        assert stats["requests"] == 2 and stats["inputs"] == 2 and stats["errors_sent"] == 1
        assert stats["text_counts"] == {"one": 1, "two": 1}
    finally:
        process.terminate()
        assert process.wait(15) == 0  # SIGTERM stops it cleanly
