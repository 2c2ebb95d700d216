"""An ASGI middleware counting HTTP requests by method, route template and status."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.metrics import HTTP_REQUESTS, HTTP_SECONDS


def route_label(scope: Scope) -> str:
    """The route's template (`/api/v1/messages/{message_id}`), never the raw path: labels stay
    few whatever the clients send."""
    # FastAPI >= 0.16x keeps an included route's full template in its effective route context
    # (the route's own `path` lacks the routers' prefixes); earlier versions in `route.path`.
    context = (scope.get("fastapi") or {}).get("effective_route_context")
    template = getattr(context, "path_format", None) or getattr(scope.get("route"), "path", None)
    if isinstance(template, str):
        return template
    path = str(scope.get("path", ""))
    if path.startswith("/console/static/"):
        return "/console/static"
    # A plain route without parameters (the console's pages, /metrics): its path is its
    # template, one of a fixed few.
    if scope.get("endpoint") is not None and not scope.get("path_params"):
        return path
    return "unmatched"


class HttpMetrics:
    """Wraps the app: every request ends in HTTP_REQUESTS and HTTP_SECONDS."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            method, route = str(scope.get("method", "")), route_label(scope)
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_SECONDS.labels(method, route).observe(time.perf_counter() - started)
