"""Alembic environment: async online migrations and offline `--sql`, same URL logic as the app."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from alembic import context
from app.core.config import get_settings
from app.core.errors import ConfigurationError

try:  # the models read the settings when imported: a wrong one is one line, not a traceback
    get_settings()
except ConfigurationError as exc:
    print(f"error: {exc.message}", file=sys.stderr)  # noqa: T201 - the CLI's one line
    raise SystemExit(2) from None

import app.models  # noqa: E402, F401 - registers the tables on the metadata

config = context.config
if not logging.getLogger().handlers:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)-5.5s [%(name)s] %(message)s")
    logging.getLogger("alembic").setLevel(logging.INFO)

target_metadata = SQLModel.metadata
OFFLINE_PLACEHOLDER_URL = "postgresql+asyncpg://postgres@localhost:5432/tasktracker"


def include_object(
    _obj: object, _name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    # Tables of other tools (alembic's own aside) are not ours to drop.
    return not (type_ == "table" and reflected and compare_to is None)


def run_migrations_offline() -> None:
    """Print the SQL; no database is contacted."""
    from app.core.urls import to_asyncpg_url

    settings = get_settings()
    url = (
        to_asyncpg_url(settings.database_url) if settings.database_url else OFFLINE_PLACEHOLDER_URL
    )
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


VECTOR_INDEXES_REVISION = "0002"


def repair_vector_indexes(connection: Connection) -> None:
    """After any upgrade at or past add_vector_indexes: rebuild an invalid or wrong HNSW index."""
    from sqlalchemy import text

    from app.indexes.build import BuildOptions, IndexBuilder
    from app.indexes.progress import make_reporter

    connection.commit()
    current = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    script = context.script
    if not any(
        rev.revision == VECTOR_INDEXES_REVISION
        for head in current
        for rev in script.iterate_revisions(head, "base")
    ):
        return
    connection.commit()
    autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
    options = BuildOptions.from_settings(get_settings())
    IndexBuilder(autocommit, options, make_reporter(sys.stderr)).ensure()


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_object=include_object,
        transaction_per_migration=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    if context.get_x_argument(as_dictionary=True).get("repair", "1") != "0" and _is_upgrade():
        repair_vector_indexes(connection)


def _is_upgrade() -> bool:
    command = getattr(config.cmd_opts, "cmd", None)
    name = getattr(command[0], "__name__", "") if command else ""
    return name == "upgrade" or bool(config.attributes.get("is_upgrade"))


async def run_async_migrations() -> None:
    from app.db import check_database, migration_engine

    connectable = config.attributes.get("connection")
    if connectable is not None:
        await connectable.run_sync(do_run_migrations)
        return
    # SIGTERM stops a build as Ctrl-C does: the statement is cancelled, one line says what is left
    task = asyncio.current_task()
    if task is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    engine = migration_engine()
    try:
        await check_database(engine)
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    from app.indexes.build import IndexBuildInterrupted, app_error_in

    try:
        asyncio.run(run_async_migrations())
    except Exception as exc:  # a configuration or index build error: one line, no traceback
        error = app_error_in(exc)
        if error is None:
            raise
        print(f"error: {error.message}", file=sys.stderr)  # noqa: T201 - the CLI's one line
        raise SystemExit(130 if isinstance(error, IndexBuildInterrupted) else 1) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)  # noqa: T201 - the builder said what is left
        raise SystemExit(130) from None


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
