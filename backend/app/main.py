"""The FastAPI application: create_app(); the lifespan opens the engine and the broker client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api.errors import install_error_handlers
from app.api.v1.router import api_router
from app.core.config import Settings, get_settings
from app.core.log import configure_logging
from app.schemas.errors import error_responses


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API app; the database engine and the broker open in the lifespan."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from app.api.state import AppState

        state = AppState(settings)
        await state.open()
        app.state.tt = state
        try:
            yield
        finally:
            await state.close()

    app = FastAPI(
        title="tasktracker",
        version="0.1.0",
        summary="Team chat in, searchable knowledge out: messages, atoms, topics, vector search.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(
        api_router, prefix="/api/v1", responses=error_responses(404, 409, 422, 502, 503)
    )
    return app


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory`."""
    configure_logging(get_settings().log_level)
    return create_app()
