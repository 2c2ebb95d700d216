"""A task that fails on an outage logs one line with its reason; a bug keeps its traceback."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from app.broker import connection_errors
from app.core.errors import EmbeddingProviderError
from app.core.log import redacting_handler
from app.worker import task_logs


@pytest.fixture
def receiver_log() -> Iterator[io.StringIO]:
    """taskiq's receiver logger with the worker's filter, into a buffer, as the worker has it."""
    out = io.StringIO()
    logger = logging.getLogger(task_logs.RECEIVER_LOGGER)
    handler = redacting_handler(out)
    logger.addHandler(handler)
    task_logs.install()
    try:
        yield out
    finally:
        logger.removeHandler(handler)


def _raised(exc: Exception) -> None:
    logger = logging.getLogger(task_logs.RECEIVER_LOGGER)
    try:
        raise exc
    except Exception:
        logger.exception("Exception found while executing function.")  # what taskiq does


def test_a_provider_outage_is_one_line_with_the_reason(receiver_log: io.StringIO) -> None:
    _raised(
        EmbeddingProviderError(
            "HTTP 503: provider outage Bearer sk-abcdefghijklmnop", provider="p", retryable=True
        )
    )
    lines = receiver_log.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert "WARNING" in lines[0] and "task failed: EmbeddingProviderError" in lines[0]
    assert "HTTP 503" in lines[0] and "sk-abcdefghijklmnop" not in lines[0]  # still redacted


def test_a_bug_keeps_its_traceback(receiver_log: io.StringIO) -> None:
    _raised(ZeroDivisionError("division by zero"))
    text = receiver_log.getvalue()
    assert "Traceback" in text and "ZeroDivisionError" in text


async def test_nats_connection_errors_are_one_line_each_half_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    on_error = connection_errors(every=30.0)
    with caplog.at_level(logging.DEBUG, logger="app.broker"):
        for _ in range(5):
            await on_error(ConnectionRefusedError(111, "Connect call failed"))
    loud = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(loud) == 1 and loud[0].exc_info is None
    assert "ConnectionRefusedError" in loud[0].getMessage()
