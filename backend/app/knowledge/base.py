"""The extractor contract: a window of messages in, validated topics and atoms out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from app.core.errors import AppError
from app.knowledge.schemas import ExtractionResult, SourceMessage


class ExtractionError(AppError):
    """An extractor could not produce a valid result; the message says which one and why."""

    status_code = 502

    def __init__(
        self,
        message: str,
        *,
        extractor: str,
        retryable: bool = False,
        status: int | None = None,
        detail: object | None = None,
    ):
        super().__init__(f"knowledge extractor {extractor!r}: {message}", detail=detail)
        self.extractor = extractor
        self.retryable = retryable
        self.status = status


@runtime_checkable
class Extractor(Protocol):
    """Turns a window of chat messages into topics and atoms whose sources are those messages."""

    name: str

    async def extract(self, messages: Sequence[SourceMessage]) -> ExtractionResult:
        """Extract topics and atoms; raise ExtractionError when no valid result can be had."""
        ...
