"""A database error's log line and traceback carry no token, key or message content."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.api.errors import _database_response
from app.core.config import Settings
from app.core.log import redact, redacting_handler
from app.core.urls import to_asyncpg_url
from app.db import create_engine

TOKEN = "tt_" + "Q7vIzBx9" * 5 + "abc"
KEY = "sk-proj-redaction-test-0123456789abcdef"
CONTENT = "Launch code for the release is PURPLE-OCTOPUS-42"
SECRETS = (TOKEN, KEY, CONTENT, "PURPLE-OCTOPUS", "Q7vIzBx9", "redaction-test")


@pytest.fixture
async def engines(make_db: Callable[[], str]) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    """The app's engine, and a plain one (SQLAlchemy's defaults) to show what would leak."""
    url = make_db()
    app_engine = create_engine(to_asyncpg_url(url), Settings(database_url=url))
    plain = create_async_engine(to_asyncpg_url(url))
    yield app_engine, plain
    await app_engine.dispose()
    await plain.dispose()


@pytest.fixture
def captured() -> tuple[io.StringIO, logging.Logger]:
    buffer = io.StringIO()
    logger = logging.getLogger("tests.redaction")
    logger.handlers = [redacting_handler(buffer)]
    logger.propagate = False
    return buffer, logger


async def error_of(engine: AsyncEngine, sql: str, **params: object) -> DBAPIError:
    async with engine.connect() as conn:
        try:
            await conn.execute(text(sql), params)
        except DBAPIError as exc:
            return exc
    raise AssertionError(f"no error from {sql}")


INSERT = (
    "INSERT INTO messages (id, author, channel, content, sent_at, extraction_status) "
    "VALUES (gen_random_uuid(), :author, :channel, :content, now(), :status)"
)
FORCED = [
    # A check violation: Postgres' DETAIL quotes the whole failing row, content included.
    (INSERT, {"author": TOKEN, "channel": KEY, "content": CONTENT, "status": "bogus"}),
    # A value Postgres cannot parse is quoted in the message itself.
    (
        "SELECT CAST(:content AS uuid), :key, :token",
        {"content": CONTENT, "key": KEY, "token": TOKEN},
    ),
    # asyncpg refusing an argument quotes it too.
    ("SELECT CAST(:n AS int) + length(:content)", {"n": CONTENT, "content": KEY}),
    # An error that is nobody's input (a missing table): the 500 path, parameters only.
    (
        "SELECT :content, :key, :token FROM no_such_table",
        {"content": CONTENT, "key": KEY, "token": TOKEN},
    ),
]


@pytest.mark.parametrize(("sql", "params"), FORCED)
async def test_a_forced_database_error_logs_no_secret_or_content(
    engines: tuple[AsyncEngine, AsyncEngine],
    captured: tuple[io.StringIO, logging.Logger],
    sql: str,
    params: dict[str, object],
) -> None:
    buffer, logger = captured
    app_engine, plain = engines
    leaky = await error_of(plain, sql, **params)
    unguarded = io.StringIO()
    logging.StreamHandler(unguarded).handle(log_record(leaky))
    assert any(secret in unguarded.getvalue() for secret in SECRETS), unguarded.getvalue()
    for exc in (leaky, await error_of(app_engine, sql, **params)):
        try:
            raise exc
        except DBAPIError:
            logger.exception("database error")
        logger.error("while handling %s: %r", exc, exc.orig)
    written = buffer.getvalue()
    assert written.count("Traceback (most recent call last)") >= 2, written
    assert "[SQL: " in written, written  # the statement stays readable
    for secret in SECRETS:
        assert secret not in written, (secret, written)


def log_record(exc: BaseException) -> logging.LogRecord:
    return logging.LogRecord(
        "plain", logging.ERROR, __file__, 1, "database error", None, (type(exc), exc, None)
    )


async def test_the_api_handler_logs_no_secret_or_content(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    """Through the real handler: the unexpected error is logged with its traceback, redacted."""
    buffer = io.StringIO()
    handler = redacting_handler(buffer)
    api_logger = logging.getLogger("app.api.errors")
    api_logger.addHandler(handler)
    try:
        for sql, params in FORCED:
            response = _database_response(await error_of(engines[0], sql, **params))
            assert response.status_code in (409, 422, 500)
            for secret in SECRETS:
                assert secret.encode() not in bytes(response.body)
    finally:
        api_logger.removeHandler(handler)
    written = buffer.getvalue()
    assert "database error" in written and "Traceback" in written and "no_such_table" in written
    for secret in SECRETS:
        assert secret not in written, (secret, written)


def test_redact_masks_url_passwords_and_keeps_the_rest() -> None:
    said = redact("nats://tasktracker:s3cr3t-pass@nats:4222 and postgresql://postgres:pw@db/x")
    assert said == "nats://tasktracker:***@nats:4222 and postgresql://postgres:***@db/x"
    assert redact("SELECT 1 FROM messages") == "SELECT 1 FROM messages"
