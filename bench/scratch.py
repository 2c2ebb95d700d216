"""A scratch database on the configured (or embedded) server, dropped afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from app.core import endpoints
from app.core.config import Settings
from app.core.urls import to_libpq_url, with_database


@asynccontextmanager
async def scratch_database(settings: Settings, name: str) -> AsyncIterator[str]:
    """Yields a libpq URL of a fresh database `name`; never the user's data.

    The embedded servers this joins stay up until the caller's `endpoints.release()`.
    """
    admin = with_database(to_libpq_url(endpoints.ensure_database_url(settings)), "postgres")
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield with_database(admin, name)
    finally:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
