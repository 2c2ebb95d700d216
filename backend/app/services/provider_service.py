"""Embedding providers: the llm_providers table (keys encrypted) and the settings fallback."""

from __future__ import annotations

import uuid
from dataclasses import replace

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.core.config import Settings
from app.core.enums import ProviderType
from app.core.errors import ConflictError, DimensionMismatchError, NotFoundError, ValidationError
from app.core.security import decrypt_secret, encrypt_secret
from app.models.provider import LLMProvider
from app.services.embeddings import ProviderSpec

DEFAULT_MODELS = {
    ProviderType.local: ("multilingual-e5-small-q4", 384),
    ProviderType.openai: ("text-embedding-3-small", 1536),
    ProviderType.ollama: ("nomic-embed-text", 768),
}


def spec_from_settings(settings: Settings) -> ProviderSpec:
    """The provider the settings describe (the embedded default: the local model)."""
    kind = ProviderType(settings.embedding_provider)
    model, native_dims = DEFAULT_MODELS[kind]
    dims = native_dims if kind is ProviderType.local else settings.embedding_dimensions
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
            f"but the database column is vector({column}). Fix: set EMBEDDING_DIMENSIONS="
            f"{spec.dimensions} and recreate the database (alembic downgrade base && alembic "
            f"upgrade head), or configure a provider/model that returns {column} dimensions."
        )


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
) -> LLMProvider:
    """Store a provider; its API key is encrypted before it reaches the database."""
    exists = await session.execute(select(col(LLMProvider.id)).where(col(LLMProvider.name) == name))
    if exists.first() is not None:
        raise ConflictError(f"a provider named {name!r} already exists")
    if is_default:
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
    return row


def redacted(spec: ProviderSpec) -> ProviderSpec:
    """The spec without its key, for anything that may be shown."""
    return replace(spec, api_key=None)
