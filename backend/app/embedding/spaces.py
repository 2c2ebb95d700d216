"""Embedding spaces as the pipeline and search see them, cached per process by config version.

`SpaceBook` keeps the live spaces (active, target, previous) and re-reads them when
`embedding_config.version` moved; it looks at the version at most every `ttl` seconds, so a
provider change or a cutover reaches every process within seconds without a restart. What a
space's vectors are made with is `spec_for_space`: its provider row (or the settings' provider
for a space seeded from them), refused when its model or dimension no longer match the space.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from sqlalchemy import text

from app.core.config import Settings
from app.core.errors import ConfigurationError, DimensionMismatchError, ValidationError
from app.embedding.entities import ENTITIES, Entity
from app.embedding.providers import ProviderSpec
from app.models.embedding_space import SLOT_SUFFIX
from app.models.provider import LLMProvider

SWITCH_HINT = "tasktracker embeddings switch --provider NAME"
_FIELDS = (
    "id, entity, state, phase, provider_id, provider_name, provider_type, model, dimensions, "
    "storage, column_name, index_name"
)
LIVE_SQL = f"SELECT {_FIELDS} FROM embedding_spaces WHERE state <> 'retired' ORDER BY entity, id"
VERSION_SQL = "SELECT version FROM embedding_config WHERE id = 1"


class Executes(Protocol):
    async def execute(self, statement: Any, parameters: Any = None) -> Any: ...


@dataclass(frozen=True)
class Space:
    id: int
    entity: str
    state: str
    phase: str | None
    provider_id: uuid.UUID | None
    provider_name: str
    provider_type: str
    model: str
    dimensions: int
    storage: str
    column_name: str
    index_name: str

    @property
    def suffix(self) -> str:
        return SLOT_SUFFIX.get(self.state, "")

    @property
    def slot(self) -> Entity:
        """The entity's columns that hold this space's vectors."""
        return ENTITIES[self.entity].slot(self.suffix, self.id)

    @property
    def opclass(self) -> str:
        return f"{self.storage}_cosine_ops"

    @property
    def column_type(self) -> str:
        return f"{self.storage}({int(self.dimensions)})"

    def describe(self) -> str:
        return f"{self.provider_name} ({self.model}, {self.dimensions} dims, {self.storage})"

    def same_model(self, other: Space) -> bool:
        return (self.model, self.dimensions, self.storage) == (
            other.model,
            other.dimensions,
            other.storage,
        )


async def load_spaces(conn: Executes) -> list[Space]:
    """Every space that is not retired."""
    rows = (await conn.execute(text(LIVE_SQL))).all()
    return [Space(*row) for row in rows]


async def config_version(conn: Executes) -> int:
    return int((await conn.execute(text(VERSION_SQL))).scalar_one())


def _pick(spaces: Sequence[Space], entity: str, state: str) -> Space | None:
    return next((s for s in spaces if s.entity == entity and s.state == state), None)


def active_of(spaces: Sequence[Space], entity: str) -> Space:
    space = _pick(spaces, entity, "active")
    if space is None:
        raise ConfigurationError(
            f"no active embedding space for {entity}. Fix: run `alembic upgrade head`"
        )
    return space


def target_of(spaces: Sequence[Space], entity: str) -> Space | None:
    return _pick(spaces, entity, "target")


def previous_of(spaces: Sequence[Space], entity: str) -> Space | None:
    return _pick(spaces, entity, "previous")


def writable(spaces: Sequence[Space], entity: str) -> list[Space]:
    """The spaces every new or edited row is embedded for: the active one, a switch's target,
    and the previous one until the switch is finished (so a rollback loses nothing)."""
    return [s for s in spaces if s.entity == entity and s.state in ("active", "target", "previous")]


class SpaceBook:
    """The live spaces of this process, re-read when the config version moved."""

    def __init__(self, ttl: float = 2.0):
        self.ttl = ttl
        self.version: int | None = None
        self._spaces: list[Space] = []
        self._checked = 0.0

    async def refresh(self, conn: Executes, *, force: bool = False) -> bool:
        """Look at the version (at most every ttl seconds); True when it changed.

        No lock: two callers at once both read, and the last one's answer stays (a lock made
        at import would belong to the first event loop that waited on it)."""
        now = time.monotonic()
        if not force and self.version is not None and now - self._checked < self.ttl:
            return False
        version = await config_version(conn)
        self._checked = now
        if version == self.version and not force:
            return False
        self._spaces = await load_spaces(conn)
        changed, self.version = self.version != version, version
        return changed

    async def spaces(self, conn: Executes) -> list[Space]:
        await self.refresh(conn)
        return list(self._spaces)

    async def active(self, conn: Executes, entity: str) -> Space:
        return active_of(await self.spaces(conn), entity)

    async def writable(self, conn: Executes, entity: str) -> list[Space]:
        return writable(await self.spaces(conn), entity)

    async def by_id(self, conn: Executes, space_id: int) -> Space | None:
        """A live space by id; read again at once when this process does not know it yet."""
        for force in (False, True):
            await self.refresh(conn, force=force)
            found = next((s for s in self._spaces if s.id == space_id), None)
            if found is not None:
                return found
        return None


def spec_for_space(
    space: Space, row: LLMProvider | None, settings: Settings, from_settings: ProviderSpec
) -> ProviderSpec:
    """What makes this space's vectors: its provider row, or the settings' provider."""
    from app.embedding.provider_service import spec_from_row

    fits = (from_settings.model, from_settings.dimensions) == (space.model, space.dimensions)
    if space.provider_id is not None and (row is None or not row.is_active) and fits:
        return from_settings  # its provider was deactivated: the settings' one, same model
    if space.provider_id is not None:
        if row is None or not row.is_active:
            raise ConfigurationError(
                f"the provider {space.provider_name!r} of the active {space.entity} space is "
                f"gone or inactive. Fix: activate it, or switch: `{SWITCH_HINT}`"
            )
        spec = spec_from_row(row, settings)
    else:
        # A space seeded from the settings follows EMBEDDING_* at the same dimension (and
        # `backfill --stale` re-embeds what an earlier model made); another dimension, or a
        # provider row, is moved to with a switch.
        spec = from_settings
        check_fits_space(spec, replace(space, model=spec.model))
        return spec
    check_fits_space(spec, space)
    return spec


def check_fits_space(spec: ProviderSpec, space: Space) -> None:
    """Refuse a provider whose model or dimension is not the space's, naming the switch."""
    if spec.dimensions != space.dimensions:
        raise DimensionMismatchError(
            f"provider {spec.name!r} ({spec.model}) returns {spec.dimensions}-dimensional "
            f"vectors but the {space.state} {space.entity} space holds {space.dimensions}. "
            f"Fix: move to the new model online with `tasktracker embeddings switch --provider "
            f"{spec.name}` (no data is dropped), or configure a provider of {space.dimensions} "
            "dimensions."
        )
    if spec.model != space.model:
        raise ConfigurationError(
            f"provider {spec.name!r} embeds with {spec.model}, but the {space.state} "
            f"{space.entity} space holds vectors of {space.model}: they cannot be compared. "
            f"Fix: `tasktracker embeddings switch --provider {spec.name}`"
        )


def space_for_provider(spaces: Sequence[Space], entity: str, provider_id: uuid.UUID) -> Space:
    """The active or target space this provider fills, else a 422 saying why."""
    allowed = [s for s in spaces if s.entity == entity and s.state in ("active", "target")]
    for space in allowed:
        if space.provider_id == provider_id:
            return space
    names = ", ".join(f"{s.state}: {s.describe()}" for s in allowed)
    raise ValidationError(
        f"provider_id {provider_id} is neither the active nor a switch's target provider of "
        f"{entity} ({names}): its vectors would mix models in one column. Omit provider_id, "
        f"or start a switch: `{SWITCH_HINT}`",
        detail={"field": "provider_id"},
    )
