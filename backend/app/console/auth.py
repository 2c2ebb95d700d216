"""The console's sign-in: an API token kept in an HttpOnly, SameSite=Strict cookie, and CSRF.

The token never travels in a URL: the sign-in form POSTs it and the answer sets the cookie
(path /console, so the JSON API never sees it; Secure on https). Every page checks the
token again, so a revoked token signs the console out on its next request.

CSRF: the sign-in form carries a random value also set in a short-lived cookie (double
submit); every other form carries HMAC-SHA256(token, "console-csrf"), which only a page
rendered for that cookie can know. SameSite=Strict is a second wall: the browser does not
send the cookie with a request another site starts.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from app.api.state import AppState
from app.auth.dependencies import auth_waived, scope_of
from app.models.api_token import TokenScope

SESSION_COOKIE = "tt_console"
LOGIN_CSRF_COOKIE = "tt_console_csrf"
COOKIE_PATH = "/console"
SESSION_SECONDS = 8 * 3600
_WAIVED = "auth-disabled"  # the CSRF key when AUTH_ENABLED=false on loopback


@dataclass(frozen=True)
class Operator:
    """Who is signed in: the token's scope and the CSRF value of its pages."""

    scope: TokenScope
    csrf: str

    @property
    def can_write(self) -> bool:
        return self.scope.covers(TokenScope.write)


def csrf_for(token: str) -> str:
    return hmac.new(token.encode(), b"console-csrf", hashlib.sha256).hexdigest()


async def operator_of(request: Request, state: AppState) -> Operator | None:
    """The signed-in operator, or None (no cookie, or a token no longer valid)."""
    if auth_waived(request, state):
        return Operator(TokenScope.admin, csrf_for(_WAIVED))
    token = request.cookies.get(SESSION_COOKIE, "")
    scope = await scope_of(state, token)
    return None if scope is None else Operator(scope, csrf_for(token))


def csrf_ok(operator: Operator, submitted: str | None) -> bool:
    return submitted is not None and hmac.compare_digest(operator.csrf, submitted)


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session(response: Response, request: Request, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=SESSION_SECONDS,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path=COOKIE_PATH)


def clear_session(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")


def login_csrf_value(request: Request) -> str:
    """The sign-in form's CSRF value: the one in the cookie while it lasts, else a new one."""
    return request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)


def remember_login_csrf(response: Response, request: Request, value: str) -> None:
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        value,
        max_age=3600,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )


def login_csrf_ok(request: Request, submitted: str | None) -> bool:
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE)
    return bool(cookie and submitted) and hmac.compare_digest(cookie or "", submitted or "")
