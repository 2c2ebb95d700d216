"""Which provider embeds: the one named by id, else the table's active default, else the settings."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.enums import ProviderType
from app.core.errors import ConflictError, NotFoundError, ValidationError
from app.embedding import provider_service

SETTINGS = Settings(
    embedding_provider="openai",
    embedding_model="settings-model",
    embedding_dimensions=384,
    embedding_base_url="http://127.0.0.1:1/v1",
)


async def _create(session: AsyncSession, name: str, *, default: bool = False) -> uuid.UUID:
    row = await provider_service.create_provider(
        session,
        name=name,
        type=ProviderType.openai,
        # the active space's model: a default of another model is refused (a switch moves to it)
        embedding_model="settings-model",
        embedding_dimensions=384,
        base_url="http://127.0.0.1:1/v1",
        api_key=f"sk-{name}-0123456789",
        is_default=default,
        settings=SETTINGS,
    )
    return row.id


async def test_resolution_order_id_then_active_default_then_settings(session: AsyncSession) -> None:
    async def model(provider_id: uuid.UUID | None = None) -> str:
        return (await provider_service.resolve_spec(session, provider_id, SETTINGS)).name

    assert await model() == "settings:openai"  # an empty table: the settings' provider
    named = await _create(session, "named")
    assert await model() == "settings:openai", "a provider that is not the default is not used"
    default = await _create(session, "default", default=True)
    assert await model() == "default"
    assert await model(named) == "named", "an id wins over the default"
    second = await _create(session, "second", default=True)
    assert await model() == "second", "a new default replaces the old one"
    row = await session.get(provider_service.LLMProvider, second)
    assert row is not None
    row.is_active = False
    await session.flush()
    assert await model() == "settings:openai", "an inactive default is not used"
    assert await model(default) == "default"


async def test_a_default_of_another_model_is_refused_with_the_switch(
    session: AsyncSession,
) -> None:
    with pytest.raises(ConflictError, match="tasktracker embeddings switch --provider wide"):
        await provider_service.create_provider(
            session,
            name="wide",
            type=ProviderType.openai,
            embedding_model="another-model",
            embedding_dimensions=384,
            is_default=True,
            settings=SETTINGS,
        )


async def test_an_inactive_or_unknown_provider_id_is_refused_by_name(session: AsyncSession) -> None:
    off = await _create(session, "off")
    row = await session.get(provider_service.LLMProvider, off)
    assert row is not None
    row.is_active = False
    await session.flush()
    with pytest.raises(ValidationError, match="provider 'off' is not active"):
        await provider_service.resolve_spec(session, off, SETTINGS)
    unknown = uuid.uuid4()
    with pytest.raises(NotFoundError, match=f"provider {unknown} not found"):
        await provider_service.resolve_spec(session, unknown, SETTINGS)
