"""The two embedded entities, as the SQL of the pipeline sees them.

An entity's embedding columns come in slots, one per embedding space: the active space's
columns carry the seed's names (`embedding`, `embedding_model`, ...), a switch's target the
same names with `_next`, the space kept for rollback with `_prev` (app.embedding.spaces).
An Entity with a suffix and a space id is that slot: every statement of the pipeline names its
columns through `Entity.cols`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Literal

from app.models.atom import ATOM_TEXT_SQL
from app.models.base import EMBEDDING_PENDING
from app.models.message import MESSAGE_TEXT_SQL

EntityName = Literal["messages", "atoms"]

# Every column a slot has, by its active name.
SLOT_COLUMNS = (
    "embedding",
    "embedding_model",
    "embedded_at",
    "embedding_content_hash",
    "embedding_error",
    "embedding_queued_at",
    "embedding_attempts",
    "embedding_claimed_by",
    "embedding_claim_expires_at",
)


@dataclass(frozen=True)
class Columns:
    """The column names of one slot."""

    suffix: str

    @property
    def vector(self) -> str:
        return f"embedding{self.suffix}"

    @property
    def model(self) -> str:
        return f"embedding_model{self.suffix}"

    @property
    def embedded_at(self) -> str:
        return f"embedded_at{self.suffix}"

    @property
    def hash(self) -> str:
        return f"embedding_content_hash{self.suffix}"

    @property
    def error(self) -> str:
        return f"embedding_error{self.suffix}"

    @property
    def queued_at(self) -> str:
        return f"embedding_queued_at{self.suffix}"

    @property
    def attempts(self) -> str:
        return f"embedding_attempts{self.suffix}"

    @property
    def claimed_by(self) -> str:
        return f"embedding_claimed_by{self.suffix}"

    @property
    def claim_expires_at(self) -> str:
        return f"embedding_claim_expires_at{self.suffix}"

    @property
    def needs_text(self) -> str:
        """Rows whose vector in this slot is missing or was made for another text."""
        return f"{self.hash} IS DISTINCT FROM content_hash"


@dataclass(frozen=True)
class Entity:
    name: EntityName
    table: str
    text_sql: str
    suffix: str = ""  # the slot: "" active, "_next" a switch's target, "_prev" kept for rollback
    space_id: int | None = None  # the embedding space the slot holds (None: the active one)

    @cached_property
    def cols(self) -> Columns:
        return Columns(self.suffix)

    @property
    def index(self) -> str:
        """The HNSW index on the slot's vectors (app.indexes.catalog builds the active one)."""
        return f"{self.table}_embedding{self.suffix}_hnsw_idx"

    @property
    def pending_index(self) -> str:
        return f"ix_{self.table}_embedding_pending{self.suffix}"

    def slot(self, suffix: str, space_id: int | None) -> Entity:
        """The same entity, another slot."""
        return replace(self, suffix=suffix, space_id=space_id)

    @property
    def base(self) -> Entity:
        return ENTITIES[self.name]


MESSAGES = Entity("messages", "messages", MESSAGE_TEXT_SQL)
ATOMS = Entity("atoms", "atoms", ATOM_TEXT_SQL)
ENTITIES: dict[str, Entity] = {"messages": MESSAGES, "atoms": ATOMS}

# Rows whose vector is missing or was made for another text (served by the partial index
# ix_<table>_embedding_pending), optionally also those made by another model.
NEEDS_TEXT = EMBEDDING_PENDING


def needs_text_or_model(model_param: str) -> str:
    """Pending, or embedded by another model than the one bound at `model_param` ($2, :model)."""
    return f"({NEEDS_TEXT} OR embedding_model IS DISTINCT FROM {model_param})"
