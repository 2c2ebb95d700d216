"""Database URL normalisation: libpq and SQLAlchemy forms in, one asyncpg form out."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from app.core.errors import ConfigurationError

_SCHEMES = {
    "postgres",
    "postgresql",
    "postgresql+asyncpg",
    "postgresql+psycopg",
    "postgresql+psycopg2",
}
# libpq query parameters asyncpg does not understand, and what they become.
_SSLMODE_TO_ASYNCPG = {
    "disable": "disable",
    "allow": "allow",
    "prefer": "prefer",
    "require": "require",
    "verify-ca": "verify-ca",
    "verify-full": "verify-full",
}


def to_asyncpg_url(url: str) -> str:
    """Return `url` as a `postgresql+asyncpg://` URL; `?host=/socket/dir` is kept."""
    parts = urlsplit(url.strip())
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError as exc:
        raise ConfigurationError(
            f"DATABASE_URL is malformed ({exc}). Fix: use postgresql://user:password@host:5432/dbname"
        ) from None
    if parts.scheme not in _SCHEMES:
        raise ConfigurationError(
            f"DATABASE_URL has an unsupported scheme {parts.scheme!r}. "
            "Fix: use postgresql://user:password@host:5432/dbname"
        )
    query = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "sslmode":
            query.append(("ssl", _SSLMODE_TO_ASYNCPG.get(value, value)))
        elif key in {"application_name", "connect_timeout", "options", "target_session_attrs"}:
            continue
        else:
            query.append((key, value))
    return urlunsplit(("postgresql+asyncpg", parts.netloc, parts.path, urlencode(query), ""))


def to_libpq_url(url: str) -> str:
    """Return `url` as a plain `postgresql://` URL, as psql and asyncpg.connect accept it."""
    parts = urlsplit(to_asyncpg_url(url))
    query = [
        ("sslmode" if key == "ssl" else key, value)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(query), ""))


def redact_url(url: str) -> str:
    """The URL with its password replaced, fit for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def database_name(url: str) -> str:
    """The database name of a URL (its path without the leading slash)."""
    return urlsplit(url).path.lstrip("/") or "postgres"


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` instead."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def nats_servers(url: str) -> list[str]:
    """The servers of a NATS_URL: one URL, or several of one cluster separated by commas."""
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise ConfigurationError(
            "NATS_URL names no server. Fix: nats://host:4222, or several separated by commas."
        )
    for server in servers:
        parts = urlsplit(server if "://" in server else f"nats://{server}")
        try:
            parts.port  # noqa: B018 - parsing the port is the check
        except ValueError as exc:
            raise ConfigurationError(
                f"NATS_URL has a malformed server {redact_url(server)!r} ({exc}). "
                "Fix: nats://host:4222, or several separated by commas."
            ) from None
        if parts.scheme not in {"nats", "tls", "ws", "wss"} or not parts.hostname:
            raise ConfigurationError(
                f"NATS_URL has a malformed server {redact_url(server)!r}. "
                "Fix: nats://host:4222, or several separated by commas."
            )
    return servers


def redact_nats_url(url: str) -> str:
    """A NATS_URL (one server or several) with its passwords replaced."""
    return ",".join(redact_url(part.strip()) for part in url.split(","))
