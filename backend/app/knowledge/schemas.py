"""Knowledge extraction: the messages an extractor reads and the topics and atoms it returns."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.core.enums import AtomType

TopicName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=120)]
AtomTitle = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
AtomContent = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=4000)
]

# Keywords OpenAI's strict structured output accepts; anything else is dropped from the schema
# we send (pydantic still enforces it when we parse the answer).
_STRICT_KEYWORDS = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "anyOf",
        "description",
        "title",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minItems",
        "maxItems",
        "pattern",
        "format",
    }
)


class SourceMessage(BaseModel):
    """One chat message handed to an extractor; `id` is the caller's opaque message id."""

    model_config = ConfigDict(frozen=True)

    id: str
    author: str
    channel: str
    content: str
    sent_at: datetime


class ExtractedTopic(BaseModel):
    """A theme several atoms belong to."""

    model_config = ConfigDict(extra="forbid")

    name: TopicName = Field(description="Short topic name, unique within the answer.")
    description: str = Field(default="", description="One sentence on what the topic covers.")


class ExtractedAtom(BaseModel):
    """One unit of knowledge found in the messages, with the ids of the messages it came from."""

    model_config = ConfigDict(extra="forbid")

    type: AtomType = Field(description="The kind of knowledge.")
    title: AtomTitle = Field(description="A short, specific title (at most 200 characters).")
    content: AtomContent = Field(
        description="The knowledge itself, self-contained (<= 4000 chars)."
    )
    confidence: float = Field(ge=0.0, le=1.0, description="How sure you are, from 0 to 1.")
    topic: TopicName = Field(description="The name of one of the topics in `topics`, verbatim.")
    source_message_ids: list[str] = Field(
        min_length=1, description="Ids of the input messages this atom is drawn from."
    )


class ExtractionResult(BaseModel):
    """Topics and atoms extracted from one window of messages."""

    model_config = ConfigDict(extra="forbid")

    topics: list[ExtractedTopic]
    atoms: list[ExtractedAtom]

    @model_validator(mode="after")
    def _topics_are_consistent(self) -> Self:
        problems = self._topic_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def validate_against(self, message_ids: set[str]) -> Self:
        """Raise ValueError naming unknown source ids or unknown topics; return self otherwise."""
        problems = self._topic_problems()
        unknown = sorted({i for a in self.atoms for i in a.source_message_ids} - message_ids)
        if unknown:
            problems.append(f"unknown source_message_ids: {', '.join(map(repr, unknown))}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _topic_problems(self) -> list[str]:
        names = [t.name for t in self.topics]
        problems: list[str] = []
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            problems.append(f"duplicate topic names: {', '.join(map(repr, duplicates))}")
        missing = sorted({a.topic for a in self.atoms} - set(names))
        if missing:
            problems.append(
                f"atoms refer to topics not in `topics`: {', '.join(map(repr, missing))}"
            )
        return problems


def extraction_json_schema() -> dict[str, Any]:
    """The ExtractionResult JSON schema in the form OpenAI's strict structured output accepts."""
    schema = ExtractionResult.model_json_schema()
    defs: dict[str, Any] = schema.pop("$defs", {})
    strict: dict[str, Any] = _strict(schema, defs)
    return strict


def _strict(node: Any, defs: dict[str, Any]) -> Any:
    """Inline $refs, keep supported keywords, close every object and require all its keys."""
    if isinstance(node, list):
        return [_strict(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in _STRICT_KEYWORDS:
            continue
        if key == "properties":
            out[key] = {name: _strict(sub, defs) for name, sub in value.items()}
        else:
            out[key] = _strict(value, defs)
    if out.get("type") == "object":
        out["additionalProperties"] = False
        out["required"] = list(out.get("properties", {}))
    return out
