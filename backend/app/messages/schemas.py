"""Request and response models for messages."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import BoundedDatetime, CleanText, NoNul, Omittable


class MessageIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "author": "olena.k",
                    "channel": "backend",
                    "content": "Login fails with ERR_AUTH_401 after deploy",
                }
            ]
        },
    )

    external_id: NoNul | None = Field(default=None, min_length=1, max_length=200)
    author: CleanText = Field(min_length=1, max_length=200)
    channel: CleanText = Field(min_length=1, max_length=100)
    content: CleanText = Field(min_length=1, max_length=20_000)
    sent_at: BoundedDatetime | None = None


class MessageBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[MessageIn] = Field(min_length=1, max_length=1000)


class MessageUpdate(BaseModel):
    """Only the fields given change; none of them may be null (the columns are required)."""

    model_config = ConfigDict(extra="forbid")

    author: Omittable[CleanText] = Field(default=None, min_length=1, max_length=200)
    channel: Omittable[CleanText] = Field(default=None, min_length=1, max_length=100)
    content: Omittable[CleanText] = Field(default=None, min_length=1, max_length=20_000)
    extraction_status: Omittable[Literal["pending", "processing", "done", "failed"]] = None


class MessageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    external_id: str | None
    author: str
    channel: str
    content: str
    sent_at: datetime
    extraction_status: str
    embedded: bool = False
    embedding_current: bool = False
    embedding_model: str | None
    embedded_at: datetime | None
    embedding_error: str | None
    embedding_attempts: int
    created_at: datetime
    updated_at: datetime


class MessagesCreated(BaseModel):
    ids: list[uuid.UUID]
    created: int
    duplicates: int
    embedding: Literal["queued", "pending"] = Field(
        description="queued: embedding tasks were published; pending: the sweeper will queue them"
    )


class MessagePage(BaseModel):
    items: list[MessageOut]
    next_after: uuid.UUID | None
