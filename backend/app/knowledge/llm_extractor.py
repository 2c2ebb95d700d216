"""Knowledge extraction with a chat model over the OpenAI-compatible chat completions API.

The model answers with strict structured output (a JSON schema); the answer is validated with
pydantic and against the input message ids. An invalid answer is sent back to the model with
the validation error so it can correct itself, up to `max_attempts` times.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import openai
import pydantic

from app.core.errors import ConfigurationError
from app.knowledge.base import ExtractionError
from app.knowledge.schemas import ExtractionResult, SourceMessage, extraction_json_schema

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

OPENAI_BASE_URL = "https://api.openai.com/v1"
SCHEMA_NAME = "knowledge_extraction"
_MAX_QUOTED = 500
_MAX_ERRORS_LISTED = 10
_SECRET_LIKE = re.compile(r"\b(sk|pk|key)-[\w*.\-]{4,}", re.IGNORECASE)

SYSTEM_PROMPT = """\
You extract durable team knowledge from a window of chat messages.
Return topics and atoms. An atom is one piece of knowledge of one of these types:
- problem: something is broken, failing or wrong (bugs, errors, outages).
- solution: how a problem was or can be fixed (fixes, workarounds, hotfixes).
- decision: a choice the team made or agreed on.
- question: an open question someone asked that matters for the work.
- insight: something learned or discovered (a root cause, a surprising fact).
- idea: a proposal or suggestion not yet decided.
- blocker: work that cannot proceed until something else happens.
- risk: something that might go wrong in the future.
- requirement: something the system or the work must do or support.
Rules:
- Use only what the messages say; do not invent facts. Skip small talk and greetings.
- source_message_ids must be ids of the given messages, copied exactly.
- Every atom's topic must be the exact name of one of the returned topics; group related
  atoms under the same topic and keep topic names short and specific.
- Write titles and content in the language of the source messages.
- confidence is your probability (0 to 1) that the atom is correct and worth keeping.
- If there is no knowledge in the window, return empty lists.
"""


class LLMExtractor:
    """Extracts topics and atoms with a chat model that supports strict JSON-schema output."""

    def __init__(
        self,
        model: str,
        base_url: str | None,
        api_key: str | None,
        *,
        max_attempts: int = 3,
        timeout: float = 60.0,
        max_retries: int = 2,
    ):
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if api_key is None and base_url is None:
            raise ConfigurationError("CHAT_API_KEY is required to use the OpenAI API (CHAT_MODEL)")
        self.model = model
        self.name = f"llm:{model}"
        self.base_url = base_url or OPENAI_BASE_URL
        self.max_attempts = max_attempts
        self._api_key = api_key
        # Local OpenAI-compatible servers ignore the key, but the SDK insists on one; passing it
        # explicitly also keeps the SDK from reading OPENAI_API_KEY from the environment.
        # max_retries: the SDK retries 429, 5xx and timeouts itself, honouring Retry-After.
        self._client = openai.AsyncOpenAI(
            api_key=api_key or "unused",
            base_url=self.base_url,
            timeout=timeout,
            max_retries=max_retries,
        )

    async def extract(self, messages: Sequence[SourceMessage]) -> ExtractionResult:
        """Ask the model for topics and atoms; retry invalid answers with the error as feedback."""
        if not messages:
            return ExtractionResult(topics=[], atoms=[])
        ids = {m.id for m in messages}
        conversation: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": render_messages(messages)},
        ]
        problem = answer = ""
        for _ in range(self.max_attempts):
            answer, problem = await self._ask(conversation)
            if not problem:
                try:
                    return ExtractionResult.model_validate_json(answer).validate_against(ids)
                except ValueError as exc:
                    problem = describe_invalid(exc)
            conversation.append({"role": "assistant", "content": answer or "(no content)"})
            conversation.append({"role": "user", "content": feedback(problem)})
        raise ExtractionError(
            f"no valid answer after {self.max_attempts} attempt(s); last answer was invalid: "
            f"{truncate(problem)}; it began: {truncate(answer, 200)!r}",
            extractor=self.name,
            retryable=False,
        )

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.close()

    async def __aenter__(self) -> LLMExtractor:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def _ask(self, conversation: list[ChatCompletionMessageParam]) -> tuple[str, str]:
        """One chat completion: (answer text, problem) where problem is "" for a usable answer."""
        completion = await self._complete(conversation)
        if not completion.choices:
            return "", "the response had no choices"
        choice = completion.choices[0]
        content = choice.message.content or ""
        if choice.message.refusal:
            return content, f"the model refused: {truncate(choice.message.refusal)}"
        if choice.finish_reason == "length":
            return content, "the answer was cut off (finish_reason=length); be more concise"
        if not content.strip():
            return content, "the answer was empty"
        return content, ""

    async def _complete(self, conversation: list[ChatCompletionMessageParam]) -> ChatCompletion:
        try:
            return await self._client.chat.completions.create(
                model=self.model,
                messages=conversation,
                response_format={
                    "type": "json_schema",
                    "json_schema": {
                        "name": SCHEMA_NAME,
                        "strict": True,
                        "schema": extraction_json_schema(),
                    },
                },
            )
        except openai.OpenAIError as exc:
            raise self._provider_error(exc) from None

    def _provider_error(self, exc: openai.OpenAIError) -> ExtractionError:
        """Describe an SDK failure by host and status, with anything key-like redacted."""
        host = urlsplit(self.base_url).netloc or self.base_url
        status: int | None = None
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            what = f"HTTP {status}: {self._redact(_status_error_text(exc))}"
        elif isinstance(exc, openai.APITimeoutError):
            what = "request timed out"
        elif isinstance(exc, openai.APIConnectionError):
            what = "connection failed"
        else:
            what = f"{type(exc).__name__}: {self._redact(str(exc))}"
        retryable = status is None or status == 429 or status >= 500
        return ExtractionError(
            f"chat provider at {host} failed: {what}",
            extractor=self.name,
            retryable=retryable,
            status=status,
        )

    def _redact(self, text: str) -> str:
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return truncate(_SECRET_LIKE.sub("***", text), 300)


def render_messages(messages: Sequence[SourceMessage]) -> str:
    """The user turn: the window of messages as a JSON array, in the order given."""
    rows = [
        {
            "id": m.id,
            "author": m.author,
            "channel": m.channel,
            "sent_at": m.sent_at.isoformat(),
            "content": m.content,
        }
        for m in messages
    ]
    return "Extract topics and atoms from these chat messages:\n" + json.dumps(
        rows, ensure_ascii=False, indent=1
    )


def feedback(problem: str) -> str:
    """The correction turn sent after an invalid answer."""
    return (
        f"Your previous answer was invalid: {truncate(problem, 2000)}\n"
        "Answer again with a single JSON object that matches the schema, using only ids of the "
        "given messages and topic names that appear in `topics`."
    )


def describe_invalid(exc: ValueError) -> str:
    """A compact, model-readable account of why an answer did not validate."""
    if not isinstance(exc, pydantic.ValidationError):
        return str(exc)
    errors = exc.errors(include_url=False)
    parts = [
        f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}"
        for e in errors[:_MAX_ERRORS_LISTED]
    ]
    if len(errors) > _MAX_ERRORS_LISTED:
        parts.append(f"... and {len(errors) - _MAX_ERRORS_LISTED} more errors")
    return "; ".join(parts)


def truncate(text: str, limit: int = _MAX_QUOTED) -> str:
    """`text` cut to `limit` characters, marked when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _status_error_text(exc: openai.APIStatusError) -> str:
    body: Any = exc.body
    if isinstance(body, dict):
        message = body.get("message") or body.get("error")
        if isinstance(message, dict):
            message = message.get("message")
        if message:
            return str(message)
    return exc.message
