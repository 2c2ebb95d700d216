"""Request and response models for the embeddings and providers API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from app.core.enums import ProviderType
from app.embedding.status import EntityCoverage, IndexState, ServerMemory, SpaceCoverage
from app.schemas.common import HeaderSecret, NoNul, Omittable


class EnqueueRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"all_missing": True}]}
    )

    ids: list[uuid.UUID] = Field(default_factory=list, max_length=10_000)
    all_missing: bool = Field(
        default=False, description="Queue every row without a current embedding."
    )
    provider_id: uuid.UUID | None = None


class EnqueueResponse(BaseModel):
    queued: int
    failed_to_queue: int
    skipped: int = Field(description="Ids that already had a current embedding or do not exist.")


class EmbedNowResponse(BaseModel):
    id: uuid.UUID
    embedded: int
    skipped: int
    failed: int
    error: str | None = None


class ProviderInfo(BaseModel):
    name: str
    type: str
    model: str
    dimensions: int


class EmbeddingStatus(BaseModel):
    coverage: list[EntityCoverage]
    indexes: list[IndexState]
    provider: ProviderInfo | None
    provider_error: str | None = None
    spaces: list[SpaceCoverage] = []
    memory: ServerMemory | None = None


class SwitchRequest(BaseModel):
    provider: str = Field(min_length=1, max_length=200, description="The provider's name.")
    storage: Literal["vector", "halfvec"] = "vector"


class CutoverRequest(BaseModel):
    force: bool = Field(
        default=False, description="Below 100%: search then skips rows the new model lacks."
    )


class SwitchResponse(BaseModel):
    message: str
    spaces: list[SpaceCoverage]


class ProviderCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    type: ProviderType
    base_url: HttpUrl | None = None
    api_key: HeaderSecret | None = Field(
        default=None, max_length=500, description="Write-only; stored encrypted."
    )
    embedding_model: NoNul = Field(min_length=1, max_length=200)
    embedding_dimensions: int = Field(ge=1, le=16000)
    chat_model: NoNul | None = Field(default=None, max_length=200)
    is_default: bool = False


class ProviderUpdate(BaseModel):
    """Only the fields given change. base_url, api_key and chat_model may be null (cleared);
    the others are required columns and may not. A new host without a new key drops the key."""

    model_config = ConfigDict(extra="forbid")

    base_url: HttpUrl | None = None
    api_key: HeaderSecret | None = Field(default=None, max_length=500)
    chat_model: NoNul | None = Field(default=None, max_length=200)
    embedding_model: Omittable[NoNul] = Field(default=None, min_length=1, max_length=200)
    embedding_dimensions: Omittable[int] = Field(default=None, ge=1, le=16000)
    is_active: Omittable[bool] = None
    is_default: Omittable[bool] = None


class ProviderOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    type: str
    base_url: str | None
    has_api_key: bool
    embedding_model: str
    embedding_dimensions: int
    chat_model: str | None
    is_active: bool
    is_default: bool
    created_at: datetime


class ProviderTestOut(BaseModel):
    ok: bool
    latency_ms: float | None
    dimensions: int | None
    error: str | None


class ExtractRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message_ids: list[uuid.UUID] = Field(default_factory=list, max_length=5000)
    all_pending: bool = Field(default=False, description="Every message not extracted yet.")
    provider_id: uuid.UUID | None = None
    window: int = Field(default=50, ge=1, le=200, description="Messages per extraction task.")


class ExtractResponse(BaseModel):
    messages: int
    tasks: int
    status: Literal["queued", "failed_to_queue"]
