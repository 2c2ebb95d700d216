"""One error shape for the whole API: {"error": ..., "detail": ...}."""

from __future__ import annotations

import logging

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.errors import AppError

logger = logging.getLogger(__name__)


def _body(error: str, detail: object = None) -> dict[str, object]:
    return {"error": error, "detail": detail}


def install_error_handlers(app: FastAPI) -> None:
    """AppErrors become their status; validation errors 422 naming the field; DB outages 503."""

    @app.exception_handler(AppError)
    async def app_error(_request: Request, exc: AppError) -> JSONResponse:
        return JSONResponse(_body(exc.message, exc.detail), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {"field": ".".join(str(p) for p in err.get("loc", ())), "message": err.get("msg")}
            for err in exc.errors()
        ]
        fields = ", ".join(d["field"] for d in detail)
        return JSONResponse(_body(f"invalid request: {fields}", detail), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            _body(str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(PoolTimeoutError)
    async def pool_timeout(_request: Request, _exc: PoolTimeoutError) -> JSONResponse:
        return JSONResponse(
            _body("database busy, try again"), status_code=503, headers={"Retry-After": "1"}
        )

    @app.exception_handler(DBAPIError)
    async def database_error(_request: Request, exc: DBAPIError) -> JSONResponse:
        cause = getattr(exc.orig, "__cause__", None)
        if isinstance(
            cause, asyncpg.CharacterNotInRepertoireError | asyncpg.UntranslatableCharacterError
        ):
            return JSONResponse(
                _body("text contains characters PostgreSQL cannot store (such as NUL)"),
                status_code=422,
            )
        if exc.connection_invalidated or isinstance(exc.orig, OSError | ConnectionError):
            return JSONResponse(
                _body("database unavailable"), status_code=503, headers={"Retry-After": "2"}
            )
        logger.exception("database error")
        return JSONResponse(_body("database error"), status_code=500)
