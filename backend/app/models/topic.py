"""A topic groups atoms."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Column, ForeignKey, Text
from sqlmodel import Field, SQLModel

from app.models.base import created_at_field, uuid_pk


class Topic(SQLModel, table=True):
    __tablename__ = "topics"

    id: uuid.UUID = uuid_pk()
    name: str = Field(sa_type=Text, unique=True)
    description: str = Field(default="", sa_type=Text, sa_column_kwargs={"server_default": ""})
    created_at: datetime = created_at_field()


class TopicAtom(SQLModel, table=True):
    __tablename__ = "topic_atoms"

    topic_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("topics.id", ondelete="CASCADE"), primary_key=True)
    )
    atom_id: uuid.UUID = Field(
        sa_column=Column(ForeignKey("atoms.id", ondelete="CASCADE"), primary_key=True, index=True)
    )
