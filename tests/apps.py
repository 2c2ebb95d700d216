"""The app in-process, as the integration tests open it: settings on the OpenAI-compatible stub,
the state the lifespan would set (so a test owns its engine), and bearer tokens."""

from __future__ import annotations

import uuid

from fastapi import FastAPI

from app.api.state import AppState
from app.auth import token_service
from app.core.config import Settings
from app.main import create_app
from app.models.api_token import TokenScope
from testkit.stubs.openai_stub import OpenAIStub


def stub_settings(
    url: str, stub: OpenAIStub, nats_url: str, *, key: str, stream: str, **extra: object
) -> Settings:
    """Settings on database `url`, a stream of its own, and the stub's 384-dim model."""
    return Settings(
        database_url=url,
        nats_url=nats_url,
        nats_stream=f"{stream}{uuid.uuid4().hex[:8]}",
        embedding_provider="openai",
        embedding_model="text-embedding-3-small",
        embedding_base_url=stub.base_url,
        embedding_api_key=key,  # type: ignore[arg-type]
        embedding_dimensions=384,
        **extra,  # type: ignore[arg-type]
    )


def app_with_state(settings: Settings) -> tuple[FastAPI, AppState]:
    """The app and its state, set by hand (the lifespan's job): the test closes the state."""
    app = create_app(settings)
    state = AppState(settings)
    app.state.tt = state
    return app, state


async def mint_token(state: AppState, scope: TokenScope, name: str) -> str:
    """A new bearer token of `scope`, committed."""
    async with state.sessions() as session:
        token, _ = await token_service.create_token(session, scope, name)
        await session.commit()
    return token
