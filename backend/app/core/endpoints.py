"""Where the database and the broker are: the configured servers, else the embedded ones."""

from __future__ import annotations

import threading

from app.core.config import Settings, get_settings
from app.core.embedded import DEFAULT_DATABASE, EmbeddedNats, EmbeddedPostgres
from app.core.urls import nats_servers as split_servers
from app.core.urls import to_asyncpg_url

_lock = threading.Lock()
_postgres: EmbeddedPostgres | None = None
_nats: EmbeddedNats | None = None


def ensure_database_url(settings: Settings | None = None) -> str:
    """The asyncpg URL of the database, starting the embedded server when none is configured."""
    global _postgres
    settings = settings or get_settings()
    if settings.database_url:
        return to_asyncpg_url(settings.database_url)
    with _lock:
        if _postgres is None:
            server = EmbeddedPostgres(
                settings.postgres_dir, shared_buffers=settings.embedded_postgres_shared_buffers
            )
            server.start()
            server.ensure_database(DEFAULT_DATABASE)
            _postgres = server
    return to_asyncpg_url(_postgres.url(DEFAULT_DATABASE))


def ensure_nats_url(settings: Settings | None = None) -> str:
    """The NATS URL, starting the embedded nats-server when none is configured."""
    global _nats
    settings = settings or get_settings()
    if settings.nats_url:
        return settings.nats_url
    with _lock:
        if _nats is None:
            server = EmbeddedNats(settings.nats_dir)
            server.start()
            _nats = server
    return _nats.url()


def nats_servers(settings: Settings | None = None) -> list[str]:
    """The NATS servers to connect to: NATS_URL's (one, or several of a cluster), else the
    embedded one."""
    return split_servers(ensure_nats_url(settings))


def embedded_postgres() -> EmbeddedPostgres | None:
    """The embedded Postgres this process joined, if any."""
    return _postgres


def release() -> None:
    """Leave the embedded servers this process joined (the last one out stops them)."""
    global _postgres, _nats
    with _lock:
        if _nats is not None:
            _nats.stop()
            _nats = None
        if _postgres is not None:
            _postgres.stop()
            _postgres = None
