"""Request and response models for semantic search."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.enums import AtomType
from app.schemas.common import BoundedDatetime, CleanText, NoNul


class SearchRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"query": "bug fix", "limit": 5}]}
    )

    query: CleanText = Field(
        min_length=1, max_length=2000, description="What to look for, in any language."
    )
    limit: int = Field(default=10, ge=1, le=100)
    offset: int = Field(default=0, ge=0, le=900, description="limit + offset is at most 1000")
    threshold: float | None = Field(
        default=None, ge=-1.0, le=1.0, description="Minimum cosine similarity."
    )
    mode: Literal["vector", "hybrid"] = Field(
        default="vector",
        description="hybrid fuses full-text matches (exact codes, ids) with vector results.",
    )


class MessageSearchRequest(SearchRequest):
    channel: NoNul | None = Field(default=None, max_length=100)
    author: NoNul | None = Field(default=None, max_length=200)
    sent_after: BoundedDatetime | None = None
    sent_before: BoundedDatetime | None = None


class AtomSearchRequest(SearchRequest):
    types: list[AtomType] = Field(default_factory=list, max_length=9)
    topic_id: uuid.UUID | None = None


class SearchHitOut(BaseModel):
    id: uuid.UUID
    similarity: float | None = Field(
        description="1 - cosine distance; null when the row has no embedding."
    )
    score: float = Field(description="Reciprocal-rank-fusion score used for ordering.")
    matched_by: list[str] = Field(description="vector and/or fulltext.")
    vector_rank: int | None
    fulltext_rank: int | None
    item: dict[str, Any]


class SearchResponse(BaseModel):
    query: str
    mode: str
    limit: int
    offset: int
    results: list[SearchHitOut]
    not_embedded: int = Field(
        description="Rows of the searched set not embedded yet (not vector candidates)."
    )
    ef_search: int
    took_ms: float
    embedding_model: str | None = Field(
        default=None, description="The model of the embedding space searched (every row's)."
    )
