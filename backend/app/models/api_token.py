"""An API bearer token: only its SHA-256 and a short non-secret prefix are stored."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, DateTime, Text
from sqlmodel import Field, SQLModel

from app.models.base import created_at_field, uuid_pk


class TokenScope(StrEnum):
    """Ordered: admin covers write, write covers search."""

    search = "search"
    write = "write"
    admin = "admin"

    def covers(self, needed: TokenScope) -> bool:
        """Whether a token of this scope may do what `needed` allows."""
        order = list(TokenScope)
        return order.index(self) >= order.index(needed)


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_tokens"
    __table_args__ = (CheckConstraint("scope IN ('search', 'write', 'admin')", name="scope"),)

    id: uuid.UUID = uuid_pk()
    name: str | None = Field(default=None, sa_type=Text)
    scope: str = Field(sa_type=Text)
    # The first characters after "tt_": enough to tell tokens apart in a list, useless to log in.
    prefix: str = Field(sa_type=Text)
    # SHA-256 hex of the whole token; the plain token is shown once and never stored.
    token_hash: str = Field(sa_type=Text, unique=True)
    created_at: datetime = created_at_field()
    last_used_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    revoked_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
