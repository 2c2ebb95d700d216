"""Embedding providers: the llm_providers table (keys encrypted) and the settings fallback."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import col

from app.core.config import Settings
from app.core.enums import ProviderType
from app.core.errors import ConflictError, DimensionMismatchError, NotFoundError, ValidationError
from app.core.security import decrypt_secret, encrypt_secret
from app.embedding.providers import ProviderSpec
from app.embedding.providers.ollama_provider import DEFAULT_BASE_URL as OLLAMA_DEFAULT_URL
from app.models.provider import LLMProvider

DEFAULT_MODELS = {
    ProviderType.local: ("multilingual-e5-small-q4", 384),
    ProviderType.openai: ("text-embedding-3-small", 1536),
    ProviderType.ollama: ("nomic-embed-text", 768),
}


# Held while a provider becomes the default, so two at once queue instead of both clearing the
# other's flag and colliding on the unique index of is_default.
DEFAULT_LOCK = "SELECT pg_advisory_xact_lock(hashtext('llm_providers.is_default'))"


def spec_from_settings(settings: Settings) -> ProviderSpec:
    """The provider the settings describe (the embedded default: the local model).

    Its base_url is the operator's own setting, so its host is allowed even when it is
    loopback or private (the policy still refuses link-local and metadata addresses).
    """
    kind = ProviderType(settings.embedding_provider)
    model, native_dims = DEFAULT_MODELS[kind]
    dims = native_dims if kind is ProviderType.local else settings.embedding_dimensions
    base_url = settings.embedding_base_url
    if kind is ProviderType.ollama and not base_url:
        base_url = OLLAMA_DEFAULT_URL
    return ProviderSpec(
        type=kind,
        name=f"settings:{kind.value}",
        model=settings.embedding_model or model,
        dimensions=dims,
        base_url=settings.embedding_base_url,
        api_key=settings.embedding_api_key.get_secret_value()
        if settings.embedding_api_key
        else None,
        timeout=settings.embedding_timeout_seconds,
        network=settings.provider_network().allowing(base_url),
    )


def spec_from_row(row: LLMProvider, settings: Settings) -> ProviderSpec:
    """The provider a table row describes, its key decrypted for use (never for display)."""
    return ProviderSpec(
        type=ProviderType(row.type),
        name=row.name,
        model=row.embedding_model,
        dimensions=row.embedding_dimensions,
        base_url=row.base_url,
        api_key=decrypt_secret(row.api_key_encrypted) if row.api_key_encrypted else None,
        timeout=settings.embedding_timeout_seconds,
        network=settings.provider_network(),
    )


async def resolve_spec(
    session: AsyncSession, provider_id: uuid.UUID | None, settings: Settings
) -> ProviderSpec:
    """The provider by id, else the table's active default, else the settings' provider."""
    if provider_id is not None:
        row = await session.get(LLMProvider, provider_id)
        if row is None:
            raise NotFoundError(f"provider {provider_id} not found")
        if not row.is_active:
            raise ValidationError(f"provider {row.name!r} is not active")
        return spec_from_row(row, settings)
    default = (
        await session.execute(
            select(LLMProvider).where(col(LLMProvider.is_default), col(LLMProvider.is_active))
        )
    ).scalar_one_or_none()
    return spec_from_row(default, settings) if default else spec_from_settings(settings)


async def column_dimensions(session: AsyncSession, table: str = "messages") -> int:
    """N of the vector(N) embedding column."""
    sql = (
        "SELECT atttypmod FROM pg_attribute "
        "WHERE attrelid = CAST(:table AS regclass) AND attname = 'embedding'"
    )
    return int((await session.execute(text(sql), {"table": table})).scalar_one())


async def check_fits_column(session: AsyncSession, spec: ProviderSpec) -> None:
    """Refuse a provider whose vectors do not fit the database column, naming the fix."""
    column = await column_dimensions(session)
    if spec.dimensions != column:
        raise DimensionMismatchError(
            f"provider {spec.name!r} ({spec.model}) returns {spec.dimensions}-dimensional vectors "
            f"but the active embedding column holds {column}. Fix: move to it online, keeping "
            f"every row, with `tasktracker embeddings switch --provider {spec.name}`, or "
            f"configure a provider/model that returns {column} dimensions."
        )


def provider_url(kind: ProviderType, base_url: str | None) -> str | None:
    """Where a provider of this kind sends requests (None: OpenAI's public API, or no network)."""
    if kind is ProviderType.ollama:
        return base_url or OLLAMA_DEFAULT_URL
    return base_url if kind is ProviderType.openai else None


async def check_destination(settings: Settings, kind: ProviderType, base_url: str | None) -> None:
    """Refuse (422, naming base_url) a destination the network policy does not allow."""
    url = provider_url(kind, base_url)
    if url is not None:
        await settings.provider_network().check_url(url)


async def create_provider(
    session: AsyncSession,
    *,
    name: str,
    type: ProviderType,
    embedding_model: str,
    embedding_dimensions: int,
    base_url: str | None = None,
    api_key: str | None = None,
    chat_model: str | None = None,
    is_default: bool = False,
    settings: Settings | None = None,
) -> LLMProvider:
    """Store a provider; its API key is encrypted before it reaches the database."""
    check_native_dimensions(type, embedding_dimensions)
    exists = await session.execute(select(col(LLMProvider.id)).where(col(LLMProvider.name) == name))
    if exists.first() is not None:
        raise ConflictError(f"a provider named {name!r} already exists")
    if is_default:
        await check_default_fits(session, name, embedding_model, embedding_dimensions, settings)
        await session.execute(text(DEFAULT_LOCK))
        await session.execute(update(LLMProvider).values(is_default=False))
    row = LLMProvider(
        name=name,
        type=type.value,
        base_url=base_url,
        api_key_encrypted=encrypt_secret(api_key) if api_key else None,
        embedding_model=embedding_model,
        embedding_dimensions=embedding_dimensions,
        chat_model=chat_model,
        is_default=is_default,
    )
    session.add(row)
    await session.flush()
    if is_default:
        await _spaces_follow(session, row)
    return row


def check_native_dimensions(kind: ProviderType, dimensions: int) -> None:
    """The local model has one dimension; claiming another could never be satisfied."""
    native = DEFAULT_MODELS[ProviderType.local][1]
    if kind is ProviderType.local and dimensions != native:
        raise ValidationError(
            f"embedding_dimensions: the local model returns {native}-dimensional vectors, "
            f"not {dimensions}",
            detail={"field": "embedding_dimensions"},
        )


SWITCH_FIX = "tasktracker embeddings switch --provider {name}` (or POST /api/v1/embeddings/switch)"


async def check_default_fits(
    session: AsyncSession, name: str, model: str, dims: int, settings: Settings | None = None
) -> None:
    """A default whose model or dimension differs from the active spaces would mix models:
    refused (409) with the command that moves to it online."""
    rows = (
        await session.execute(
            text(
                "SELECT entity, model, dimensions, provider_id FROM embedding_spaces "
                "WHERE state = 'active'"
            )
        )
    ).all()
    for entity, recorded, active_dims, provider_id in rows:
        # a space seeded from the settings embeds with the model EMBEDDING_* name now
        active_model = (
            spec_from_settings(settings).model
            if provider_id is None and settings is not None
            else recorded
        )
        if (active_model, active_dims) != (model, dims):
            raise ConflictError(
                f"provider {name!r} ({model}, {dims} dims) is not the model of the active "
                f"{entity} space ({active_model}, {active_dims} dims): making it the default "
                "would mix two models' vectors. Fix: switch to it online with "
                f"`{SWITCH_FIX.format(name=name)}; the cutover makes it the default"
            )


async def _spaces_follow(session: AsyncSession, row: LLMProvider) -> None:
    """A new default of the active model: the active spaces are filled through it now."""
    await session.execute(
        text(
            "UPDATE embedding_spaces SET provider_id = :id, provider_name = :name, "
            "provider_type = :type, model = :model WHERE state = 'active' "
            "AND (model = :model OR provider_id IS NULL) AND dimensions = :dims"
        ),
        {
            "id": row.id,
            "name": row.name,
            "type": row.type,
            "model": row.embedding_model,
            "dims": row.embedding_dimensions,
        },
    )


async def _check_in_use(session: AsyncSession, row: LLMProvider, changes: dict[str, Any]) -> None:
    """A provider filling a space keeps its model and dimension (a switch moves to another)."""
    moved = {
        key
        for key in ("embedding_model", "embedding_dimensions", "type")
        if key in changes and changes[key] != getattr(row, key)
    }
    if not moved:
        return
    used = (
        await session.execute(
            text(
                "SELECT state, entity FROM embedding_spaces WHERE provider_id = :id "
                "AND state <> 'retired' LIMIT 1"
            ),
            {"id": row.id},
        )
    ).first()
    if used is not None:
        raise ConflictError(
            f"provider {row.name!r} fills the {used.state} {used.entity} space: changing its "
            f"{', '.join(sorted(moved))} would mix models in one column. Fix: create a provider "
            f"with the new model and `{SWITCH_FIX.format(name='NEW')}"
        )


async def update_provider(
    session: AsyncSession,
    row: LLMProvider,
    changes: dict[str, Any],
    settings: Settings | None = None,
) -> LLMProvider:
    """Apply a PATCH. A new host without a new key drops the stored key: the key was given for
    the old host, and sending it anywhere else would let it be read out."""
    await _check_in_use(session, row, changes)
    kind = ProviderType(changes.get("type", row.type))
    check_native_dimensions(
        kind, int(changes.get("embedding_dimensions", row.embedding_dimensions))
    )
    if changes.get("is_default"):
        model = changes.get("embedding_model", row.embedding_model)
        dims = int(changes.get("embedding_dimensions", row.embedding_dimensions))
        await check_default_fits(session, row.name, model, dims, settings)
    if "api_key" in changes:
        key = changes.pop("api_key")
        row.api_key_encrypted = encrypt_secret(key) if key else None
    elif "base_url" in changes and _origin(changes["base_url"]) != _origin(row.base_url):
        row.api_key_encrypted = None
    if "is_default" in changes:
        await _set_default(session, row, bool(changes.pop("is_default")))
    for name, value in changes.items():
        setattr(row, name, value)
    await session.flush()
    if row.is_default:
        await _spaces_follow(session, row)
    return row


async def _set_default(session: AsyncSession, row: LLMProvider, value: bool) -> None:
    """Written by statement, not through the loaded row: under the lock, what another request
    committed meanwhile is what the row really holds."""
    if value:
        await session.execute(text(DEFAULT_LOCK))
        await session.execute(
            update(LLMProvider)
            .where(col(LLMProvider.id) != row.id, col(LLMProvider.is_default))
            .values(is_default=False)
        )
    await session.execute(
        update(LLMProvider)
        .where(col(LLMProvider.id) == row.id)
        .values(is_default=value)
        .execution_options(synchronize_session=False)
    )
    set_committed_value(row, "is_default", value)


def _origin(url: str | None) -> tuple[str, str, int | None] | None:
    """Scheme, host and port: what decides where a request (and its key) goes."""
    if not url:
        return None
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def redacted(spec: ProviderSpec) -> ProviderSpec:
    """The spec without its key, for anything that may be shown."""
    return replace(spec, api_key=None)
