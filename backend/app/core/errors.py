"""The application's error family. Services raise these; the edges turn them into responses."""

from __future__ import annotations


class AppError(Exception):
    """An expected failure with a message fit for a user and an HTTP status for the API."""

    status_code: int = 400

    def __init__(
        self, message: str, *, detail: object | None = None, status_code: int | None = None
    ):
        super().__init__(message)
        self.message = message
        self.detail = detail
        if status_code is not None:
            self.status_code = status_code


class NotFoundError(AppError):
    status_code = 404


class ConflictError(AppError):
    status_code = 409


class ValidationError(AppError):
    status_code = 422


class ConfigurationError(AppError):
    """The environment is wrong (database unreachable, dimension mismatch...). Message names the fix."""

    status_code = 503


class ServiceUnavailableError(AppError):
    status_code = 503


class EmbeddingProviderError(AppError):
    """A provider failed. `retryable` says whether trying again later may succeed."""

    status_code = 502

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(f"embedding provider {provider!r}: {message}")
        self.provider = provider
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


class DimensionMismatchError(ConfigurationError):
    """The provider's vectors do not fit the database column."""
