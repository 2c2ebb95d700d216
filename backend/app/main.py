"""The FastAPI application: create_app(); the lifespan opens the engine and the broker client."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from starlette.routing import Route

from app.api import health
from app.api.errors import install_error_handlers
from app.api.limits import BodySizeLimit
from app.api.state import AppState
from app.auth.dependencies import LoopbackHostOnly, is_loopback
from app.console.routes import console_routes
from app.core.config import Settings, get_settings
from app.core.errors import ConfigurationError
from app.core.log import configure_logging
from app.embedding import provider_routes, space_routes
from app.embedding import routes as embedding_routes
from app.knowledge import routes as knowledge_routes
from app.messages import routes as message_routes
from app.observability.http import HttpMetrics
from app.observability.routes import metrics_endpoint
from app.schemas.errors import error_responses
from app.search import routes as search_routes

logger = logging.getLogger(__name__)


def check_auth_bind(settings: Settings, host: str) -> None:
    """Auth may be off only while the API listens on loopback; any other address is refused."""
    if settings.auth_enabled:
        return
    if not is_loopback(host):
        raise ConfigurationError(
            f"AUTH_ENABLED=false, but the API would listen on {host}: without tokens it may "
            "listen on 127.0.0.1, ::1 or localhost only. Fix: bind 127.0.0.1 (API_HOST or "
            "--host), or turn auth on (unset AUTH_ENABLED) and create a token with "
            "`tasktracker token create --scope search`."
        )
    logger.warning("AUTH_ENABLED=false: the API answers without tokens on %s", host)


def create_app(settings: Settings | None = None, *, host: str | None = None) -> FastAPI:
    """Build the API app; the database engine and the broker open in the lifespan.

    `host` is the address the server binds (default API_HOST); with auth off it must be loopback.
    """
    settings = settings or get_settings()
    check_auth_bind(settings, host or settings.api_host)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(HttpMetrics)
    if not settings.auth_enabled:
        app.add_middleware(LoopbackHostOnly)  # outermost: refused before anything else runs
    v1 = APIRouter(prefix="/api/v1", responses=error_responses(404, 409, 413, 422, 502, 503))
    for module in (
        health,
        search_routes,
        embedding_routes,
        space_routes,
        message_routes,
        provider_routes,
        knowledge_routes,
    ):
        v1.include_router(module.router)
    app.include_router(v1)
    # Plain Starlette routes: not API operations, so not in the OpenAPI schema.
    app.router.routes.append(Route("/metrics", metrics_endpoint, methods=["GET"]))
    app.router.routes.extend(console_routes())
    return app


def uvicorn_bind_address() -> str | None:
    """What uvicorn's command line binds (`--host`, `--uds`, `--fd`) when it is the one calling.

    Every way the project starts the API (`tasktracker services`, the demo, the Dockerfile) runs
    `uvicorn app.main:create_app_from_env --factory --host ...`; the factory is called inside
    uvicorn's click command, whose parameters say where it will listen.
    """
    import click

    context = click.get_current_context(silent=True)
    params = context.params if context is not None else {}
    if "factory" not in params or "host" not in params:
        return None
    if params.get("uds"):
        return f"unix:{params['uds']}"
    if params.get("fd") is not None:
        return f"fd:{params['fd']}"
    return str(params["host"])


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory`; refuses to start (exit 1, one line) on a bad setup."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        return create_app(settings, host=uvicorn_bind_address())
    except ConfigurationError as exc:
        logger.error("the API refuses to start: %s", exc.message)
        raise SystemExit(1) from None
