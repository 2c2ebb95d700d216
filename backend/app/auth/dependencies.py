"""Bearer-token access control: `require(scope)` guards every route but health.

Missing, malformed, unknown and revoked tokens get the same 401, so a caller learns nothing
about which tokens exist; a valid token whose scope is too narrow gets 403 naming the scope
needed. With AUTH_ENABLED=false (development) requests that reach the API over the loopback
interface need no token; the API refuses to start on any other address (app.main), and a
request that arrives on another one anyway (a server started some other way) still needs one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.deps import StateDep
from app.api.state import AppState
from app.auth import token_service
from app.models.api_token import TokenScope
from app.schemas.errors import error_responses

# auto_error=False: the 401 is ours, in the API's error shape and with its challenge header.
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="A token from `tasktracker token create`: `Authorization: Bearer tt_...`.",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]

AUTH_RESPONSES = error_responses(401, 403)


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1, localhost, or a Unix socket ("unix:/path"): reachable from this machine only."""
    if host == "localhost" or host.startswith("unix:"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _arrived_on_loopback(request: Request) -> bool:
    server = request.scope.get("server")  # (host, port), or (path, None) for a Unix socket
    if server is None:
        return False
    host = str(server[0])
    return is_loopback(host) or (server[1] is None and host.startswith("/"))


def auth_waived(request: Request, state: AppState) -> bool:
    """AUTH_ENABLED=false and the request came over loopback: no token needed."""
    return not state.settings.auth_enabled and _arrived_on_loopback(request)


async def scope_of(state: AppState, token: str) -> TokenScope | None:
    """The scope of a valid API token, None for a missing, unknown or revoked one (the console
    and /metrics, which do not take the token from the Authorization header only)."""
    if not token:
        return None
    async with state.sessions() as session:
        granted = await token_service.authenticate(session, token)
        await session.commit()
    return granted


def unauthorized(*, token_given: bool) -> HTTPException:
    """The one 401: the same words whether the token is missing, unknown or revoked."""
    challenge = 'Bearer error="invalid_token"' if token_given else "Bearer"
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "missing or invalid bearer token",
        headers={"WWW-Authenticate": challenge},
    )


def forbidden(needed: TokenScope, granted: TokenScope) -> HTTPException:
    """403 for a valid token whose scope does not cover `needed`."""
    return HTTPException(
        status.HTTP_403_FORBIDDEN,
        f"this token's scope ({granted.value}) does not allow this request; it needs "
        f"{needed.value}",
        headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{needed.value}"'},
    )


def require(scope: TokenScope) -> Callable[..., Awaitable[TokenScope]]:
    """A dependency that admits a request whose bearer token covers `scope`; returns its scope."""

    async def check(request: Request, state: StateDep, credentials: Credentials) -> TokenScope:
        if not state.settings.auth_enabled and _arrived_on_loopback(request):
            return TokenScope.admin
        if credentials is None:
            raise unauthorized(token_given=False)
        # Its own short session, committed before the route runs: the route's session and
        # transaction stay the route's (and a last_used_at update is not lost to a rollback).
        async with state.sessions() as session:
            granted = await token_service.authenticate(session, credentials.credentials)
            await session.commit()
        if granted is None:
            raise unauthorized(token_given=True)
        if not granted.covers(scope):
            raise forbidden(scope, granted)
        # Rate limits (app.api.limits) count per token; its hash names it without holding it.
        request.state.caller = f"token:{token_service.hash_token(credentials.credentials)}"
        return granted

    check.__name__ = f"require_{scope.value}"
    return check


SearchAccess = Depends(require(TokenScope.search))
WriteAccess = Depends(require(TokenScope.write))
AdminAccess = Depends(require(TokenScope.admin))


# With auth off, the names a request may address the API by. Any other Host header means a
# page in the developer's browser reached the loopback port through a name it controls (DNS
# rebinding), and would otherwise act with admin rights.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})


def host_name(header: str) -> str:
    """The host of a Host header, without its port: "[::1]:8000" -> "[::1]"."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.split(":", 1)[0].rstrip(".")


class LoopbackHostOnly:
    """ASGI middleware for AUTH_ENABLED=false: 400 unless Host is localhost, 127.0.0.1 or [::1]."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        host = host_name(headers.get(b"host", b"").decode("latin-1"))
        if host in LOOPBACK_HOSTS:
            await self.app(scope, receive, send)
            return
        error = (
            "Host header not allowed: with AUTH_ENABLED=false the API answers only to "
            "localhost, 127.0.0.1 and [::1]"
        )
        detail = [{"field": "Host", "message": error}]
        await JSONResponse({"error": error, "detail": detail}, status_code=400)(
            scope, receive, send
        )
