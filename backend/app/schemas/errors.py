"""The one error shape every failing response has."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorResponse(BaseModel):
    error: str = Field(
        description="What went wrong, in one sentence; for 422, the fields at fault."
    )
    detail: Any = Field(default=None, description="For 422: [{field, message}, ...].")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries documenting ErrorResponse for these status codes."""
    descriptions = {
        401: "Missing or invalid token",
        403: "Token lacks the scope",
        404: "Not found",
        409: "Conflict",
        413: "Request too large",
        422: "Invalid request",
        429: "Rate limited",
        502: "Provider error",
        503: "Unavailable (database, broker or provider)",
    }
    return {
        code: {"model": ErrorResponse, "description": descriptions.get(code, "Error")}
        for code in codes
    }
