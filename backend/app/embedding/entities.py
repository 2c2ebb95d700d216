"""The two embedded entities, as the SQL of the pipeline sees them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app.models.atom import ATOM_TEXT_SQL
from app.models.base import EMBEDDING_PENDING
from app.models.message import MESSAGE_TEXT_SQL

EntityName = Literal["messages", "atoms"]


@dataclass(frozen=True)
class Entity:
    name: EntityName
    table: str
    text_sql: str

    @property
    def index(self) -> str:
        """The HNSW index on the entity's embedding (app.indexes.catalog builds it)."""
        return f"{self.table}_embedding_hnsw_idx"


MESSAGES = Entity("messages", "messages", MESSAGE_TEXT_SQL)
ATOMS = Entity("atoms", "atoms", ATOM_TEXT_SQL)
ENTITIES: dict[str, Entity] = {"messages": MESSAGES, "atoms": ATOMS}

# Rows whose vector is missing or was made for another text (served by the partial index
# ix_<table>_embedding_pending), optionally also those made by another model.
NEEDS_TEXT = EMBEDDING_PENDING


def needs_text_or_model(model_param: str) -> str:
    """Pending, or embedded by another model than the one bound at `model_param` ($2, :model)."""
    return f"({NEEDS_TEXT} OR embedding_model IS DISTINCT FROM {model_param})"
