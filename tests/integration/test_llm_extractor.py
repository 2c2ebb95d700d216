"""LLMExtractor against the chat stub over real HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.core.enums import AtomType
from app.knowledge.base import ExtractionError, Extractor
from app.knowledge.llm_extractor import LLMExtractor
from app.knowledge.schemas import SourceMessage, extraction_json_schema
from testkit.stubs.chat_stub import ChatStub, HTTPError

API_KEY = "sk-test-very-secret-key-123"
T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


def _messages() -> list[SourceMessage]:
    texts = [
        ("m1", "max", "backend", "Checkout fails with ERR-502 after the deploy."),
        ("m2", "ivan", "backend", "Виправив: збільшив пул з'єднань, ERR-502 зник."),
    ]
    return [
        SourceMessage(id=i, author=a, channel=c, content=t, sent_at=T0 + timedelta(minutes=n))
        for n, (i, a, c, t) in enumerate(texts)
    ]


def _answer(source_ids: list[str] | None = None, topic: str = "Checkout ERR-502") -> str:
    atoms = [
        {
            "type": "problem",
            "title": "Checkout fails with ERR-502",
            "content": "After the deploy checkout fails with ERR-502.",
            "confidence": 0.9,
            "topic": topic,
            "source_message_ids": source_ids or ["m1"],
        },
        {
            "type": "solution",
            "title": "Збільшили пул з'єднань",
            "content": "ERR-502 зник після збільшення пулу з'єднань.",
            "confidence": 0.8,
            "topic": topic,
            "source_message_ids": ["m2"],
        },
    ]
    topics = [{"name": "Checkout ERR-502", "description": "The checkout outage."}]
    return json.dumps({"topics": topics, "atoms": atoms}, ensure_ascii=False)


@pytest.fixture
def stub() -> Iterator[ChatStub]:
    with ChatStub() as chat:
        yield chat


@pytest.fixture
async def extractor(stub: ChatStub) -> AsyncIterator[LLMExtractor]:
    llm = LLMExtractor("stub-model", stub.base_url, API_KEY, max_attempts=3, timeout=5.0)
    yield llm
    await llm.aclose()


def _user_turns(request: dict[str, Any]) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "user"]


async def test_valid_answer_is_parsed(stub: ChatStub, extractor: LLMExtractor) -> None:
    stub.enqueue(_answer())
    result = await extractor.extract(_messages())

    assert isinstance(extractor, Extractor)
    assert [a.type for a in result.atoms] == [AtomType.problem, AtomType.solution]
    assert result.atoms[1].source_message_ids == ["m2"]
    assert [t.name for t in result.topics] == ["Checkout ERR-502"]
    assert stub.request_count == 1


async def test_request_carries_messages_and_strict_json_schema(
    stub: ChatStub, extractor: LLMExtractor
) -> None:
    stub.enqueue(_answer())
    await extractor.extract(_messages())
    request = stub.requests[0]

    assert request["model"] == "stub-model"
    assert stub.headers[0]["authorization"] == f"Bearer {API_KEY}"
    response_format = request["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["strict"] is True
    assert response_format["json_schema"]["schema"] == extraction_json_schema()
    (user,) = _user_turns(request)
    assert '"id": "m2"' in user and "ERR-502 зник" in user and '"channel": "backend"' in user
    assert "2025-03-03T09:01:00+00:00" in user


def test_json_schema_is_strict() -> None:
    def walk(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            yield node
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    objects = [n for n in walk(extraction_json_schema()) if n.get("type") == "object"]
    assert len(objects) == 3
    for obj in objects:
        assert obj["additionalProperties"] is False
        assert obj["required"] == list(obj["properties"])
    assert not any("$ref" in n or "default" in n for n in walk(extraction_json_schema()))


async def test_invalid_json_then_valid_succeeds_after_one_retry(
    stub: ChatStub, extractor: LLMExtractor
) -> None:
    stub.enqueue("{not json at all", _answer())
    result = await extractor.extract(_messages())

    assert len(result.atoms) == 2
    assert stub.request_count == 2
    second = stub.requests[1]["messages"]
    assert second[-2] == {"role": "assistant", "content": "{not json at all"}
    assert second[-1]["role"] == "user"
    assert "previous answer was invalid" in second[-1]["content"]
    assert "Invalid JSON" in second[-1]["content"]


async def test_always_invalid_raises_after_max_attempts(
    stub: ChatStub, extractor: LLMExtractor
) -> None:
    stub.responder = lambda _request: '{"topics": [], "atoms": [{"type": "gossip"}]}'
    with pytest.raises(ExtractionError) as caught:
        await extractor.extract(_messages())

    assert stub.request_count == 3
    message = caught.value.message
    assert "llm:stub-model" in message
    assert "after 3 attempt(s)" in message
    assert "atoms.0.type" in message and "gossip" in message
    assert caught.value.status_code == 502
    assert len(_user_turns(stub.requests[-1])) == 3  # the window plus two corrections


async def test_wrong_schema_is_fed_back(stub: ChatStub, extractor: LLMExtractor) -> None:
    stub.enqueue('{"topics": [], "atoms": [], "summary": "x"}', _answer())
    await extractor.extract(_messages())
    assert "summary: Extra inputs are not permitted" in _user_turns(stub.requests[1])[-1]


async def test_unknown_source_id_is_retried_then_fails(
    stub: ChatStub, extractor: LLMExtractor
) -> None:
    stub.responder = lambda _request: _answer(["m1", "m999"])
    with pytest.raises(ExtractionError) as caught:
        await extractor.extract(_messages())

    assert stub.request_count == 3
    assert "'m999'" in caught.value.message
    assert "unknown source_message_ids" in _user_turns(stub.requests[1])[-1]


async def test_unknown_topic_is_retried(stub: ChatStub, extractor: LLMExtractor) -> None:
    stub.enqueue(_answer(topic="Payments"), _answer())
    result = await extractor.extract(_messages())
    assert len(result.atoms) == 2
    assert "'Payments'" in _user_turns(stub.requests[1])[-1]


async def test_http_401_fails_at_once_without_the_key(
    stub: ChatStub, extractor: LLMExtractor
) -> None:
    stub.enqueue(HTTPError(401, f"Incorrect API key provided: {API_KEY}", "invalid_api_key"))
    with pytest.raises(ExtractionError) as caught:
        await extractor.extract(_messages())

    assert stub.request_count == 1
    error = caught.value
    assert f"127.0.0.1:{stub.port}" in error.message
    assert "401" in error.message
    assert error.status == 401 and error.retryable is False
    assert API_KEY not in error.message and API_KEY not in str(error)
    assert "sk-test" not in error.message


async def test_server_error_is_retryable(stub: ChatStub) -> None:
    stub.enqueue(HTTPError(503, "overloaded", "server_error"))
    async with LLMExtractor("m", stub.base_url, API_KEY, max_retries=0) as llm:
        with pytest.raises(ExtractionError) as caught:
            await llm.extract(_messages())
    assert caught.value.retryable is True and caught.value.status == 503


async def test_empty_window_makes_no_request(stub: ChatStub, extractor: LLMExtractor) -> None:
    result = await extractor.extract([])
    assert result.atoms == [] and result.topics == []
    assert stub.request_count == 0
