"""The console's pages: plain Starlette routes under /console, outside the OpenAPI schema."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from app.api.deps import get_state
from app.api.state import AppState
from app.auth.dependencies import scope_of
from app.console import auth, data
from app.console import search as console_search
from app.core.enums import AtomType
from app.embedding.dependencies import registry_of
from app.embedding.entities import ENTITIES
from app.embedding.parked import retry_rows
from app.embedding.tasks import enqueuer

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
# The pages load nothing from anywhere else, and nothing may frame them.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _current_pct(coverage: Any) -> float:
    return 100.0 * coverage.current / coverage.total if coverage.total else 100.0


templates.env.filters.update(bytes=_human_bytes, duration=_duration, current_pct=_current_pct)


def _page(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> Response:
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def _state(request: Request) -> AppState:
    return get_state(request)


def _to_login() -> Response:
    return RedirectResponse("/console/login", status_code=303)


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form body (the console's forms are nothing else)."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return dict(parse_qsl(body, keep_blank_values=True))


async def overview_page(request: Request) -> Response:
    """Coverage, indexes, queue and failed rows, refreshed by the page every few seconds."""
    state = _state(request)
    operator = await auth.operator_of(request, state)
    if operator is None:
        return _to_login()
    context = await _overview_context(request, state, operator)
    context["notice"] = _notice(request)
    return _page(request, "overview.html", context)


async def panels_fragment(request: Request) -> Response:
    """The overview's panels alone, for the page's refresh."""
    state = _state(request)
    operator = await auth.operator_of(request, state)
    if operator is None:
        return Response("sign in again", status_code=401, headers=SECURITY_HEADERS)
    return _page(request, "_panels.html", await _overview_context(request, state, operator))


async def _overview_context(
    request: Request, state: AppState, operator: auth.Operator
) -> dict[str, Any]:
    now = datetime.now(UTC).strftime("%H:%M:%S UTC")
    overview = await data.overview(state, registry_of(request))
    return {"operator": operator, "o": overview, "page": "overview", "now": now}


def _notice(request: Request) -> str | None:
    """The outcome of a retry, from the redirect's query (numbers only: nothing echoed)."""
    reset, queued = request.query_params.get("retried"), request.query_params.get("queued")
    if reset is None or not reset.isdigit() or not (queued or "0").isdigit():
        return None
    return f"{reset} rows get fresh attempts; {queued or 0} queued for embedding."


async def login_page(request: Request) -> Response:
    """The sign-in form."""
    state = _state(request)
    if await auth.operator_of(request, state) is not None:
        return RedirectResponse("/console", status_code=303)
    return _login_form(request)


def _login_form(request: Request, error: str | None = None, status_code: int = 200) -> Response:
    csrf = auth.login_csrf_value(request)
    response = _page(request, "login.html", {"csrf": csrf, "error": error}, status_code)
    auth.remember_login_csrf(response, request, csrf)
    return response


async def login_submit(request: Request) -> Response:
    """Check the token; a valid one goes into the session cookie, never into a URL."""
    form = await _form(request)
    if not auth.login_csrf_ok(request, form.get("csrf")):
        return _login_form(request, "The form expired; sign in again.", 403)
    token = form.get("token", "").strip()
    if await scope_of(_state(request), token) is None:
        return _login_form(request, "That token is not valid (unknown, revoked or mistyped).", 401)
    response = RedirectResponse("/console", status_code=303)
    auth.set_session(response, request, token)
    return response


async def logout_submit(request: Request) -> Response:
    """Forget the session cookie."""
    state = _state(request)
    operator = await auth.operator_of(request, state)
    form = await _form(request)
    if operator is not None and not auth.csrf_ok(operator, form.get("csrf")):
        return _error(request, operator, 403, "Refused", "The form expired; reload the page.")
    response = _to_login()
    auth.clear_session(response)
    return response


def _error(
    request: Request, operator: auth.Operator | None, status_code: int, title: str, message: str
) -> Response:
    context = {"operator": operator, "title": title, "message": message, "page": "error"}
    return _page(request, "error.html", context, status_code)


async def retry_submit(request: Request) -> Response:
    """Give a failed row (or every failed row of an entity) fresh attempts and queue it."""
    state = _state(request)
    operator = await auth.operator_of(request, state)
    if operator is None:
        return _to_login()
    form = await _form(request)
    if not auth.csrf_ok(operator, form.get("csrf")):
        return _error(request, operator, 403, "Refused", "The form expired; reload the page.")
    if not operator.can_write:
        message = f"Retrying needs a token of scope write; this one is {operator.scope.value}."
        return _error(request, operator, 403, "Not allowed", message)
    entity = ENTITIES.get(form.get("entity", ""))
    if entity is None:
        return _error(request, operator, 422, "Bad request", "entity: messages or atoms")
    ids: list[uuid.UUID] | None = None
    if form.get("id"):
        try:
            ids = [uuid.UUID(form["id"])]
        except ValueError:
            return _error(request, operator, 422, "Bad request", "id: not a valid id")
    reset, queued = await retry_rows(
        state.engine,
        enqueuer(None, state.broker),
        entity,
        ids,
        batch_size=state.settings.task_batch_size,
    )
    query = urlencode({"retried": reset, "queued": queued})
    return RedirectResponse(f"/console?{query}#failed", status_code=303)


async def search_page(request: Request) -> Response:
    """The search box and its results."""
    state = _state(request)
    operator = await auth.operator_of(request, state)
    if operator is None:
        return _to_login()
    form = console_search.SearchForm.of(request.query_params, request.query_params.getlist("types"))
    view = await console_search.run(state, registry_of(request), form)
    context = {
        "operator": operator,
        "v": view,
        "page": "search",
        "atom_types": [t.value for t in AtomType],
    }
    return _page(request, "search.html", context, view.status_code)


def console_routes() -> list[BaseRoute]:
    """The routes to add to the app (plain Starlette routes: not in the OpenAPI schema)."""
    return [
        Route("/console", overview_page, methods=["GET"]),
        Route("/console/panels", panels_fragment, methods=["GET"]),
        Route("/console/login", login_page, methods=["GET"]),
        Route("/console/login", login_submit, methods=["POST"]),
        Route("/console/logout", logout_submit, methods=["POST"]),
        Route("/console/retry", retry_submit, methods=["POST"]),
        Route("/console/search", search_page, methods=["GET"]),
        Mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static"),
    ]
