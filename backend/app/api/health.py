"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.api.deps import get_state
from app.db import pooler_refusal

router = APIRouter(tags=["health"])


@router.get("/health/live", summary="Liveness: the process answers")
async def live() -> dict[str, str]:
    """Always ok while the process serves requests."""
    return {"status": "ok"}


@router.get("/health/ready", summary="Readiness: database and broker reachable")
async def ready(request: Request) -> JSONResponse:
    """503 while the database or the broker is unreachable."""
    state = get_state(request)
    checks: dict[str, str] = {}
    try:
        async with state.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - readiness reports, it does not raise
        refusal = pooler_refusal(exc)
        checks["database"] = f"unavailable: {refusal or type(exc).__name__}"
    client = getattr(state.broker, "client", None)
    checks["broker"] = "ok" if client is None or client.is_connected else "unavailable"
    healthy = all(value == "ok" for value in checks.values())
    body: dict[str, object] = {"status": "ok" if healthy else "unavailable", "checks": checks}
    if state.reads.health.configured:  # informational: reads fall back to the primary
        replica = await state.reads.check()
        body["read_replica"] = {
            "serving": replica.serving,
            "lag_seconds": replica.lag_seconds,
            "reason": replica.reason,
        }
    return JSONResponse(
        body,
        status_code=200 if healthy else 503,
    )
