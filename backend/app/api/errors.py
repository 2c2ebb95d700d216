"""One error shape for the whole API: {"error": ..., "detail": ...}."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.limits import BodyTooLarge, RateLimited
from app.core.errors import AppError

logger = logging.getLogger(__name__)


def _body(error: str, detail: object = None) -> dict[str, object]:
    return {"error": error, "detail": detail}


def install_error_handlers(app: FastAPI) -> None:
    """AppErrors become their status; invalid input 422 naming the field; 413 and 429 naming
    the limit; a busy or unreachable database 503 with Retry-After."""

    @app.exception_handler(AppError)
    async def app_error(_request: Request, exc: AppError) -> JSONResponse:
        return JSONResponse(_body(exc.message, exc.detail), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {"field": ".".join(str(p) for p in err.get("loc", ())), "message": _message(err)}
            for err in exc.errors()
        ]
        fields = ", ".join(d["field"] for d in detail)
        return JSONResponse(_body(f"invalid request: {fields}", detail), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        unparseable = _unparseable_body(exc)
        if unparseable is not None:
            detail = [{"field": "body", "message": unparseable}]
            return JSONResponse(_body(f"invalid request: {unparseable}", detail), status_code=422)
        return JSONResponse(
            _body(str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(_request: Request, exc: BodyTooLarge) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RateLimited)
    async def rate_limited(_request: Request, exc: RateLimited) -> JSONResponse:
        detail = {
            "group": exc.group.value,
            "per_minute": exc.per_minute,
            "retry_after_seconds": exc.retry_after,
        }
        return JSONResponse(
            _body(str(exc), detail),
            status_code=429,
            headers={"Retry-After": str(exc.retry_after)},
        )

    @app.exception_handler(PoolTimeoutError)
    async def pool_timeout(_request: Request, _exc: PoolTimeoutError) -> JSONResponse:
        # Every connection of this process's pool stayed busy for DB_POOL_TIMEOUT_SECONDS.
        return JSONResponse(
            _body("database busy: no connection free in time, try again"),
            status_code=503,
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(DBAPIError)
    async def database_error(_request: Request, exc: DBAPIError) -> JSONResponse:
        return _database_response(exc)

    @app.exception_handler(OSError)
    async def unreachable(_request: Request, exc: OSError) -> JSONResponse:
        # A connection that could not even be opened (the server restarting, its socket gone):
        # asyncpg raises these bare, not wrapped in a DBAPIError.
        logger.warning("a dependency is unreachable: %s", type(exc).__name__)
        return _unavailable()


def _database_response(exc: DBAPIError) -> JSONResponse:
    """NUL and integrity or data errors are the request's (4xx); a lost server is 503."""
    cause = getattr(exc.orig, "__cause__", None)
    if isinstance(
        cause, asyncpg.CharacterNotInRepertoireError | asyncpg.UntranslatableCharacterError
    ):
        return JSONResponse(
            _body("text contains characters PostgreSQL cannot store (such as NUL)"),
            status_code=422,
        )
    if (
        exc.connection_invalidated
        or isinstance(exc.orig, DATABASE_UNAVAILABLE)
        or isinstance(cause, DATABASE_UNAVAILABLE)
    ):
        return _unavailable()
    if isinstance(cause, STATEMENT_OUTDATED):
        # A cached statement outlived a column type change (an embedding-model cutover renames
        # columns): asyncpg drops the statement, so the same request succeeds when sent again.
        logger.warning("a cached statement outlived a schema change: %s", type(cause).__name__)
        return JSONResponse(
            _body("the schema changed under this request (an embedding-model cutover); retry"),
            status_code=503,
            headers={"Retry-After": "0"},
        )
    refused = _refused_by_database(cause)
    if refused is not None:
        return refused
    logger.error("database error: %s", type(cause or exc.orig).__name__, exc_info=exc)
    return JSONResponse(_body("database error"), status_code=500)


STATEMENT_OUTDATED = (asyncpg.InvalidCachedStatementError, asyncpg.OutdatedSchemaCacheError)
# The database went away or is restarting: the client should retry, not report a bug.
DATABASE_UNAVAILABLE = (
    OSError,
    ConnectionError,
    asyncpg.PostgresConnectionError,  # class 08: connection lost or refused
    asyncpg.OperatorInterventionError,  # class 57: admin shutdown, cannot connect now, crash
)


# Constraints whose name does not say the field plainly.
CONSTRAINT_FIELDS = {
    "uq_llm_providers_default": "is_default",
    "uq_llm_providers_name": "name",
    "uq_messages_external_id": "external_id",
}


def _field_of(error: asyncpg.PostgresError) -> str:
    """The field a constraint or data error is about, from what Postgres reports."""
    column = getattr(error, "column_name", None)
    if column:
        return str(column)
    constraint = str(getattr(error, "constraint_name", None) or "")
    if constraint in CONSTRAINT_FIELDS:
        return CONSTRAINT_FIELDS[constraint]
    table = str(getattr(error, "table_name", None) or "")
    for prefix in ("ck_", "uq_", "fk_", "ix_"):
        constraint = constraint.removeprefix(prefix)
    return constraint.removeprefix(f"{table}_") or "body"


def _refused_by_database(cause: object) -> JSONResponse | None:
    """An integrity or data error is the request's fault: 409 for a conflict, else 422.

    Only the field is named: Postgres' own message and detail may quote the values (a message's
    content, say), which belong neither in a response nor in a log line.
    """
    if isinstance(cause, asyncpg.UniqueViolationError | asyncpg.ExclusionViolationError):
        field = _field_of(cause)
        return _refusal(409, f"conflict: another row has the same {field}", field)
    if isinstance(cause, asyncpg.ForeignKeyViolationError):
        field = _field_of(cause)
        return _refusal(409, f"conflict: {field} refers to a row that does not exist", field)
    if isinstance(cause, asyncpg.IntegrityConstraintViolationError):  # not null, check
        field = _field_of(cause)
        return _refusal(422, f"invalid request: {field} is missing or not allowed", field)
    if isinstance(cause, asyncpg.DataError):  # out of range, bad format (class 22)
        field = _field_of(cause)
        return _refusal(422, f"invalid request: a value of {field} cannot be stored", field)
    return None


def _refusal(status: int, error: str, field: str) -> JSONResponse:
    logger.info("refused by the database: %s (%s)", error, status)
    return JSONResponse(_body(error, [{"field": field, "message": error}]), status_code=status)


def _unavailable() -> JSONResponse:
    return JSONResponse(
        _body("database unavailable"), status_code=503, headers={"Retry-After": "2"}
    )


def _message(error: dict[str, Any]) -> str:
    """A validation error's message, said plainly; the input itself is never echoed."""
    ctx = error.get("ctx") or {}
    kind = error.get("type")
    if kind == "json_invalid" and isinstance(ctx.get("error"), str):
        return f"{error.get('msg')}: {ctx['error']}"
    if isinstance(error.get("input"), str) and kind in ("too_long", "too_short"):
        # Pydantic checks an optional text field's bound after its validator and words it as a
        # count of "items": for text, they are characters.
        if kind == "too_long":
            return f"String should have at most {ctx.get('max_length')} characters"
        return f"String should have at least {ctx.get('min_length')} characters"
    return str(error.get("msg"))


def _unparseable_body(exc: StarletteHTTPException) -> str | None:
    """What FastAPI's generic 400 "error parsing the body" was about, when it is the client's.

    FastAPI turns a JSONDecodeError into a 422 naming the position, but any other failure of
    `json.loads` into that 400 with the cause chained: bytes that are not UTF-8, and nesting
    deeper than Python's recursion limit (about 1,000 levels).
    """
    if exc.status_code != 400:
        return None
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):
        return f"the body is not valid UTF-8 (byte {cause.start})"
    if isinstance(cause, RecursionError):
        return "the body's JSON is nested too deeply"
    return None
