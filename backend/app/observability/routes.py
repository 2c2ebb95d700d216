"""GET /metrics on the API: the Prometheus text format, behind a token unless told otherwise.

Access (settings): METRICS_OPEN=true: no token (for a port only a private network reaches);
METRICS_TOKEN set: `Authorization: Bearer <METRICS_TOKEN>`, compared in constant time; else
any valid API token (any scope). A plain Starlette route, outside the OpenAPI schema.
"""

from __future__ import annotations

import hmac

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.api.deps import get_state
from app.api.state import AppState
from app.auth.dependencies import auth_waived, scope_of
from app.embedding.dependencies import registry_of
from app.observability.scrape import refresh


def _bearer(request: Request) -> str | None:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None


async def _admitted(request: Request, state: AppState) -> bool:
    settings = state.settings
    if settings.metrics_open or auth_waived(request, state):
        return True
    token = _bearer(request)
    if token is None:
        return False
    if settings.metrics_token is not None:
        expected = settings.metrics_token.get_secret_value().encode()
        return hmac.compare_digest(token.encode(), expected)
    return await scope_of(state, token) is not None


async def metrics_endpoint(request: Request) -> Response:
    """The process's metrics, with the data and queue gauges read now."""
    state = get_state(request)
    if not await _admitted(request, state):
        return JSONResponse(
            {"error": "missing or invalid bearer token", "detail": None},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    await refresh(state, registry_of(request))
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
