"""One line, not a traceback, for a task that failed for an expected reason.

taskiq logs every exception a task raises with its traceback. A provider or database outage
is not a bug: each failed task is one line with the task and the reason (the redaction of the
handler still applies to it). Anything else keeps its traceback.
"""

from __future__ import annotations

import logging

from app.core.errors import AppError
from app.db import is_transient_db_error

RECEIVER_LOGGER = "taskiq.receiver.receiver"


def expected(exc: BaseException) -> bool:
    """An outage or a refusal the code handles, rather than a bug."""
    return isinstance(exc, AppError) or is_transient_db_error(exc)


def reason(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, AppError) else str(exc) or "no message"
    return f"{type(exc).__name__}: {text}".splitlines()[0]


class OneLineTaskErrors(logging.Filter):
    """On taskiq's receiver logger: an expected failure becomes a one-line warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not expected(exc):
            return True
        record.msg, record.args = "task failed: %s", (reason(exc),)
        record.exc_info, record.exc_text = None, None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        # as a warning now: shown only where warnings are (LOG_LEVEL=ERROR hides it)
        return logging.getLogger().isEnabledFor(logging.WARNING)


def install() -> None:
    """Put the filter on taskiq's receiver logger (once)."""
    receiver = logging.getLogger(RECEIVER_LOGGER)
    if not any(isinstance(f, OneLineTaskErrors) for f in receiver.filters):
        receiver.addFilter(OneLineTaskErrors())
