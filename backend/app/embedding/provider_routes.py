"""Embedding/chat providers. API keys are write-only: stored encrypted, never returned."""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, status
from sqlalchemy import select

from app.api.deps import SessionDep, StateDep
from app.auth.dependencies import AUTH_RESPONSES, AdminAccess
from app.core.enums import ProviderType
from app.core.errors import AppError, DimensionMismatchError, EmbeddingProviderError, NotFoundError
from app.embedding import provider_service
from app.embedding.dependencies import RegistryDep
from app.embedding.schemas import ProviderCreate, ProviderOut, ProviderTestOut, ProviderUpdate
from app.models.provider import LLMProvider

router = APIRouter(
    prefix="/providers", tags=["providers"], dependencies=[AdminAccess], responses=AUTH_RESPONSES
)


def provider_out(row: LLMProvider) -> ProviderOut:
    return ProviderOut.model_validate(
        {**row.model_dump(), "has_api_key": row.api_key_encrypted is not None}
    )


@router.get("", summary="List providers")
async def list_providers(session: SessionDep) -> list[ProviderOut]:
    """All providers; keys are never included."""
    rows = await session.execute(select(LLMProvider).order_by(LLMProvider.name))
    return [provider_out(row) for row in rows.scalars()]


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a provider")
async def create_provider(
    body: ProviderCreate, state: StateDep, registry: RegistryDep, session: SessionDep
) -> ProviderOut:
    """Store a provider; its API key is encrypted at rest. Its host must pass the network
    policy: never link-local or metadata, loopback and private only if PROVIDER_ALLOWED_HOSTS
    lists them."""
    base_url = str(body.base_url) if body.base_url else None
    await provider_service.check_destination(state.settings, body.type, base_url)
    row = await provider_service.create_provider(
        session,
        name=body.name,
        type=body.type,
        embedding_model=body.embedding_model,
        embedding_dimensions=body.embedding_dimensions,
        base_url=base_url,
        api_key=body.api_key.get_secret_value() if body.api_key else None,
        chat_model=body.chat_model,
        is_default=body.is_default,
        settings=state.settings,
    )
    await session.commit()
    if body.is_default:
        await registry.forget(None)
    return provider_out(row)


async def _get(session: SessionDep, provider_id: uuid.UUID) -> LLMProvider:
    row = await session.get(LLMProvider, provider_id)
    if row is None:
        raise NotFoundError(f"provider {provider_id} not found")
    return row


@router.patch("/{provider_id}", summary="Update a provider")
async def update_provider(
    provider_id: uuid.UUID,
    body: ProviderUpdate,
    state: StateDep,
    registry: RegistryDep,
    session: SessionDep,
) -> ProviderOut:
    """Change a provider; a new key replaces the old one, encrypted. A new host without a new
    key drops the stored key (has_api_key becomes false)."""
    row = await _get(session, provider_id)
    changes = body.model_dump(exclude_unset=True)
    if "api_key" in changes:
        key = changes["api_key"]
        changes["api_key"] = key.get_secret_value() if key else None
    if "base_url" in changes:
        changes["base_url"] = str(changes["base_url"]) if changes["base_url"] else None
        kind = ProviderType(row.type)
        await provider_service.check_destination(state.settings, kind, changes["base_url"])
    await provider_service.update_provider(session, row, changes, state.settings)
    await session.commit()
    await registry.forget(provider_id)
    await registry.forget(None)
    return provider_out(row)


@router.post("/{provider_id}/test", summary="Embed a probe text with a provider")
async def test_provider(
    provider_id: uuid.UUID, state: StateDep, registry: RegistryDep, session: SessionDep
) -> ProviderTestOut:
    """Embeds a probe text and reports latency and dimension, or a short fixed reason (never
    what the remote server said: the probe must not become a way to read other servers)."""
    row = await _get(session, provider_id)
    service = registry.build(provider_service.spec_from_row(row, state.settings))
    started = time.perf_counter()
    try:
        outcome = (await service.embed_documents(["tasktracker provider probe"]))[0]
    except AppError as exc:
        return ProviderTestOut(ok=False, latency_ms=None, dimensions=None, error=probe_reason(exc))
    finally:
        await service.aclose()
    latency = round((time.perf_counter() - started) * 1000, 1)
    if outcome.vector is None:
        reason = "request refused: the provider rejected the probe text"
        return ProviderTestOut(ok=False, latency_ms=latency, dimensions=None, error=reason)
    return ProviderTestOut(
        ok=True, latency_ms=latency, dimensions=int(outcome.vector.shape[0]), error=None
    )


def probe_reason(exc: BaseException) -> str:
    """A fixed reason for a failed probe: which kind of failure, never the remote body."""
    if isinstance(exc, DimensionMismatchError):
        return "the provider's vectors have another dimension than configured"
    if not isinstance(exc, EmbeddingProviderError):
        return "the probe failed"
    if "refused by the network policy" in exc.message:
        return "refused by the network policy (see PROVIDER_ALLOWED_HOSTS)"
    if exc.status is None:
        return "no answer: connection failed or timed out" if exc.retryable else "bad response"
    return STATUS_REASONS.get(exc.status) or (
        f"server error (HTTP {exc.status})"
        if exc.status >= 500
        else f"request refused (HTTP {exc.status})"
    )


STATUS_REASONS = {
    400: "request refused (HTTP 400): check the model name",
    401: "authentication failed (HTTP 401): check the API key",
    403: "access denied (HTTP 403): check the API key",
    404: "not found (HTTP 404): check the base_url and the model name",
    429: "rate limited (HTTP 429)",
}
