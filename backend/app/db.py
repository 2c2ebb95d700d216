"""Engine and session factories, and the database preflight that explains what is wrong."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, InterfaceError, InvalidatePoolError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from app.core.config import Settings, get_settings
from app.core.endpoints import ensure_database_url
from app.core.errors import ConfigurationError
from app.core.urls import redact_url, to_asyncpg_url

HNSW_MIN_VECTOR_VERSION = (0, 5, 0)
SEARCH_SETTINGS_INFO = "search_settings"  # key in a connection's info: the GUCs it started with


# The planner prices an HNSW scan by ef_search: a deep page (ef_search raised to limit +
# offset), a filter or a threshold can make a sequential scan look cheaper, and it is then
# 100x slower (measured: 454 ms instead of 4 ms at 100k x 1536, ef_search 200). A vector search
# over a large table whose index is valid runs with the other plans off (INDEX_PLANS). The
# connections of a search engine start so: every statement of a search's transaction runs with
# them off (the space and config lookups, the not-embedded count: the same rows, other plans)
# unless the search turns them on (ANY_PLAN: PostgreSQL's defaults, which the connections of
# any other engine keep) for a small table or a full-text step.
INDEX_PLANS = {"enable_seqscan": "off", "enable_sort": "off"}
ANY_PLAN = dict.fromkeys(INDEX_PLANS, "on")


def search_settings(
    ef_search: int, max_scan_tuples: int, *, index_plans: bool = False
) -> dict[str, str]:
    """The settings every vector search runs with (see semantic_search_service).

    Sent in the startup packet of every engine connection, so a search needs no `set_config`
    round trip unless it wants other values, and `RESET ALL` returns to them. Postgres keeps the
    `hnsw.*` values as placeholders until pgvector loads in that backend, which then adopts them.
    With `index_plans` (a search engine's connections) they include INDEX_PLANS.
    """
    return {
        "hnsw.ef_search": str(ef_search),
        "hnsw.iterative_scan": "relaxed_order",
        "hnsw.max_scan_tuples": str(max_scan_tuples),
        # a cached generic plan would keep whatever plan it was built with, whatever the query
        "plan_cache_mode": "force_custom_plan",
        **(INDEX_PLANS if index_plans else {}),
    }


def create_engine(
    url: str | None = None,
    settings: Settings | None = None,
    *,
    search: bool = False,
    **kwargs: Any,
) -> AsyncEngine:
    """An async engine on `url` (default: the configured or embedded database).

    `search=True` makes an engine for vector search only (the API's and the console's read
    sessions): its connections start with INDEX_PLANS, which a search over a large table with
    a valid index wants, so that search needs no settings statement of its own. Searches over
    a small table, and full-text ones, turn the plans back on for their transaction.

    Behind a pooler in transaction mode (DATABASE_POOL_MODE=transaction) a connection is a
    different server session at every transaction: it starts with no settings of ours
    (PgBouncer refuses unknown startup parameters), so every search sets its own for its
    transaction, and the statements it prepares are unnamed, so none piles up on a server
    session (`_POOLED`).
    """
    settings = settings or get_settings()
    pooled = settings.database_pool_mode == "transaction"
    searching = (
        {}
        if pooled
        else search_settings(
            settings.hnsw_ef_search, settings.hnsw_max_scan_tuples, index_plans=search
        )
    )
    options: dict[str, Any] = {
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_max_overflow,
        "pool_timeout": settings.db_pool_timeout_seconds,
        # not pool_pre_ping: on asyncpg it costs three round trips a checkout (_ping_on_checkout)
        # Statement parameters are messages' content, tokens' hashes, encrypted keys: an error
        # (and its traceback) names the statement only.
        "hide_parameters": True,
    }
    if kwargs.get("poolclass") is not None:
        for key in ("pool_size", "max_overflow", "pool_timeout"):
            options.pop(key)
    options.update(kwargs)
    given = options.pop("connect_args", {})
    options["connect_args"] = {
        "timeout": 10,
        "command_timeout": settings.db_command_timeout_seconds,
        **(_POOLED if pooled else {}),
        **given,
        "server_settings": {**searching, **given.get("server_settings", {})},
    }
    engine = create_async_engine(url or ensure_database_url(settings), **options)
    event.listen(engine.sync_engine, "connect", _on_connect(options["connect_args"], pooled=pooled))
    event.listen(engine.sync_engine, "checkout", _ping_on_checkout)
    return engine


# asyncpg's and SQLAlchemy's caches of prepared statements off, and the statements SQLAlchemy
# still prepares unnamed: through a transaction pooler a named statement stays on the server
# session it was prepared on (closed, if ever, from a later transaction on another one), so
# they pile up there, and a counter's name may be taken on a session another client used. An
# unnamed statement lasts until the next one: at most one a server session. Each is prepared
# and run inside the transaction that holds the server session (every statement of the app's
# pools runs in one; what runs outside, CREATE INDEX CONCURRENTLY, goes to
# DATABASE_DIRECT_URL).
_POOLED: dict[str, Any] = {
    "statement_cache_size": 0,
    "prepared_statement_cache_size": 0,
    "prepared_statement_name_func": lambda: "",
}


def direct_database_url(settings: Settings) -> str:
    """The server itself, for work that needs a session of its own (alembic, index builds:
    session-level SETs around CREATE INDEX CONCURRENTLY, which no transaction can hold)."""
    if settings.database_direct_url:
        return to_asyncpg_url(settings.database_direct_url)
    if settings.database_pool_mode == "transaction":
        raise ConfigurationError(
            "migrations and index builds need a session of their own, and DATABASE_URL goes "
            "through a pooler in transaction mode (DATABASE_POOL_MODE=transaction). Fix: set "
            "DATABASE_DIRECT_URL to the PostgreSQL server itself."
        )
    return ensure_database_url(settings)


def migration_engine(url: str | None = None, settings: Settings | None = None) -> AsyncEngine:
    """The engine `alembic` runs on: one connection, no client-side statement timeout, to the
    server itself (`direct_database_url`).

    An HNSW build on a real table takes minutes to hours; asyncpg's `command_timeout` would
    cancel it and leave the index INVALID. The index session bounds itself server-side
    (`statement_timeout = 0` and its own `lock_timeout`).
    """
    settings = settings or get_settings()
    url = url or direct_database_url(settings)
    direct = settings.model_copy(update={"database_pool_mode": "session"})
    return create_engine(url, direct, poolclass=NullPool, connect_args={"command_timeout": None})


def _on_connect(connect_args: dict[str, Any], *, pooled: bool) -> Callable[[Any, Any], None]:
    started_with = dict(connect_args["server_settings"])

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        """pgvector's binary codec (numpy arrays in and out, no text parsing), and a note of
        the settings the connection started with, which the search service reads."""
        dbapi_connection.run_async(_register_vector)
        record.info[SEARCH_SETTINGS_INFO] = started_with
        record.info[_FRESH] = True
        record.info[_POOLED_INFO] = pooled

    return on_connect


_FRESH = "fresh"  # key in a connection's info: not checked out yet, so not pinged
_POOLED_INFO = "pooled"  # key in a connection's info: behind a pooler in transaction mode


def _ping_on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """A pooled connection is alive before a request gets it: `SELECT 1` as a simple query (one
    round trip; SQLAlchemy's pool_pre_ping on asyncpg sends BEGIN, `;` and ROLLBACK, three).

    A dead one (the server restarted, a failover, an idle timeout) invalidates the pool, as
    pre-ping does: every connection made before it is replaced, and this checkout connects
    anew, so a request after a restart gets a live connection or the connect error (503), not
    a broken pipe. A connection just made is not pinged."""
    if record.info.pop(_FRESH, False):
        return
    try:
        # asyncpg's execute without arguments: the simple query protocol, one message
        dbapi_connection.run_async(lambda connection: connection.execute("SELECT 1"))
    except Exception as exc:
        # A timeout says the server is slow, not that the connection is dead: no reconnect
        # storm on a loaded server. Anything else that is not a lost connection is a defect,
        # never hidden behind reconnects. A protocol left mid-operation by the server's close
        # (`lost_mid_operation`) is a lost connection: before, it was a 500 at a restart.
        if isinstance(exc, TimeoutError) or not is_transient_db_error(exc):
            raise
        raise InvalidatePoolError(f"pooled connection failed its ping: {exc!r}") from exc


async def _register_vector(connection: Any) -> None:
    from pgvector.asyncpg import register_vector

    try:
        await register_vector(connection)
    except ValueError:
        pass  # no vector extension yet (before the first migration): nothing to register
    except asyncpg.InternalClientError as exc:
        if not lost_mid_operation(exc):
            raise
        # The connection broke while it was being set up: a lost connection, answered 503.
        raise ConnectionError(f"database connection lost during setup: {exc}") from exc


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep their objects usable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def session_scope(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session that commits when the block succeeds and rolls back when it raises."""
    async with factory() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


@asynccontextmanager
async def standalone(connection: AsyncConnection) -> AsyncIterator[None]:
    """The statements of the block run on their own when no transaction is open on the server
    yet: in autocommit, without the BEGIN and COMMIT round trips (a one-statement read sends
    one message instead of three); inside the open transaction otherwise.

    SQLAlchemy's asyncpg adapter opens the server's transaction at a connection's first
    statement; this sets the adapter's DBAPI `autocommit` for the block, so that first
    statement opens none, and the session's commit has nothing to send. Behind a pooler in
    transaction mode every statement keeps its transaction (`_POOLED`): a statement is prepared
    and run in two messages, which only a transaction keeps on one server session.
    """
    raw = await connection.get_raw_connection()
    adapter = raw.dbapi_connection
    was = getattr(adapter, "autocommit", None)
    if adapter is None or was is None or raw.info.get(_POOLED_INFO):  # statements as usual
        yield
        return
    adapter.autocommit = True
    try:
        yield
    finally:
        adapter.autocommit = was


def pooler_refusal(exc: BaseException) -> str | None:
    """What to do when a pooler in transaction mode refused the settings a connection starts
    with (PgBouncer: `unsupported startup parameter: NAME`), else None."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    message = str(cause).splitlines()[0] if str(cause) else ""
    if "unsupported startup parameter" not in message:
        return None
    return (
        f"refused a setting at connect ({message}): a pooler in transaction mode (PgBouncer) "
        "takes none. Fix: set DATABASE_POOL_MODE=transaction, and DATABASE_DIRECT_URL to the "
        "PostgreSQL server itself for migrations."
    )


def explain_connection_error(exc: BaseException, url: str) -> str:
    """One line naming what went wrong connecting to `url`, and the fix."""
    where = redact_url(url)
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    cause = getattr(cause, "__cause__", None) or cause
    refusal = pooler_refusal(cause)
    if refusal is not None:
        return f"{where} {refusal}"
    if isinstance(
        cause, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    ):
        return f"cannot log in to {where}: {cause}. Fix: correct the user/password in DATABASE_URL."
    if isinstance(cause, asyncpg.InvalidCatalogNameError):
        return f"database missing at {where}: {cause}. Fix: create it (createdb) or correct DATABASE_URL."
    if isinstance(cause, socket.gaierror):
        return f"cannot resolve the host of {where}. Fix: correct the host in DATABASE_URL."
    if isinstance(cause, OSError | TimeoutError | InterfaceError | OperationalError):
        return (
            f"cannot reach PostgreSQL at {where} ({type(cause).__name__}: {cause}). "
            "Fix: start the server or correct DATABASE_URL; unset DATABASE_URL to use the embedded one."
        )
    return f"database error at {where}: {type(cause).__name__}: {cause}"


async def check_database(engine: AsyncEngine) -> str:
    """Connect and check pgvector is available (>= 0.5.0 for HNSW); return its version."""
    url = engine.url.render_as_string(hide_password=True)
    try:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT coalesce(e.extversion, a.default_version) "
                        "FROM pg_available_extensions a LEFT JOIN pg_extension e "
                        "ON e.extname = a.name WHERE a.name = 'vector'"
                    )
                )
            ).first()
    except (OSError, TimeoutError, DBAPIError, asyncpg.PostgresError) as exc:
        raise ConfigurationError(explain_connection_error(exc, url)) from exc
    if row is None or row[0] is None:
        raise ConfigurationError(
            f"PostgreSQL at {url} has no pgvector extension. Fix: install pgvector on that server "
            "(e.g. the pgvector/pgvector image), or unset DATABASE_URL to use the embedded server."
        )
    version = str(row[0])
    if version_tuple(version) < HNSW_MIN_VECTOR_VERSION:
        raise ConfigurationError(
            f"pgvector {version} at {url} has no HNSW indexes (needs >= 0.5.0). "
            "Fix: ALTER EXTENSION vector UPDATE after installing a newer pgvector."
        )
    return version


async def check_migrated(engine: AsyncEngine) -> None:
    """The schema is there: a database the revisions never ran on is one line naming the fix."""
    async with engine.connect() as conn:
        found = (await conn.execute(text("SELECT to_regclass('messages') IS NOT NULL"))).scalar()
    if not found:
        url = engine.url.render_as_string(hide_password=True)
        raise ConfigurationError(
            f"the database at {url} has no tables yet. Fix: run `uv run alembic upgrade head`."
        )


def version_tuple(version: str) -> tuple[int, ...]:
    """'0.8.1' -> (0, 8, 1)."""
    return tuple(int(part) for part in version.split(".") if part.isdigit())


# Errors that say the server is gone for now (restart, failover, network), not that the
# statement is wrong: 08* connection exceptions, 57P* operator intervention (admin shutdown,
# crash shutdown, cannot connect now), a connection that was closed under us, a refused connect.
_TRANSIENT = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    InterfaceError,
    OperationalError,
)


def lost_mid_operation(exc: BaseException) -> bool:
    """asyncpg's protocol left mid-operation by a server that closed the connection (seen at
    every restart under load: the server's 'terminating connection' arrived while the protocol
    was busy, and the next use says "cannot switch to state 15; another operation (2) is in
    progress"): the connection is lost, like a closed one; not a bug of the statement."""
    return isinstance(exc, asyncpg.InternalClientError) and "another operation" in str(exc)


def is_transient_db_error(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) says the database is unreachable for now."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _TRANSIENT) or lost_mid_operation(current):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        current = current.__cause__ or current.__context__
    return False


PROJECT_ROOT = Path(__file__).resolve().parents[2]  # where pyproject.toml holds [tool.alembic]


def alembic_argv(*args: str) -> list[str]:
    """The command line of `alembic ARGS` in this environment (for a child process)."""
    return [sys.executable, "-m", "alembic", *args]


def alembic(
    url: str, *args: str, env: Mapping[str, str] | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    """`alembic ARGS` as users run it: a child process, from the project root, on `url`."""
    root = PROJECT_ROOT if (PROJECT_ROOT / "pyproject.toml").exists() else None
    # `url` is the database to migrate, the server itself: not a DATABASE_DIRECT_URL or a
    # pool mode this process's environment or .env may hold for another database
    child = {"DATABASE_DIRECT_URL": "", "DATABASE_POOL_MODE": "session", **(env or {})}
    return subprocess.run(
        alembic_argv(*args),
        cwd=root,
        env={**os.environ, **child, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def migrate(url: str, *, env: Mapping[str, str] | None = None) -> None:
    """`alembic upgrade head` on `url`; a failure raises with alembic's last line."""
    result = alembic(url, "upgrade", "head", env=env)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["alembic failed"])[-1]
        raise ConfigurationError(f"migrations failed: {last}")
