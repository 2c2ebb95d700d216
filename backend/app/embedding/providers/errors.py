"""Mapping of transport failures to EmbeddingProviderError: retryable or not, and why."""

from __future__ import annotations

from email.utils import parsedate_to_datetime
from time import time

from app.core.errors import EmbeddingProviderError

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds (a number or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time())
        except (TypeError, ValueError):
            return None


def status_error(
    provider: str, status: int, detail: str, retry_after: str | None
) -> EmbeddingProviderError:
    """An HTTP error status from a provider."""
    hints = {
        401: "authentication failed: check the API key",
        403: "forbidden: check the key's permissions",
        404: "not found: check base_url and the model name",
    }
    reason = hints.get(status, detail[:300] or "error")
    return EmbeddingProviderError(
        f"HTTP {status}: {reason}",
        provider=provider,
        retryable=status in RETRYABLE_STATUS,
        status=status,
        retry_after=retry_after_seconds(retry_after),
    )
