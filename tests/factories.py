"""Plain async factories for test data."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from testkit.vectors import centers_sql, near_center_sql


async def insert_messages_sql(
    conn: AsyncConnection | AsyncSession,
    count: int,
    *,
    channels: int = 5,
    prefix: str = "message",
) -> None:
    """`count` messages, content '<prefix> <n>', spread over channels c0..c{channels-1}."""
    await conn.execute(
        text(
            "INSERT INTO messages (id, author, channel, content, sent_at) "
            "SELECT gen_random_uuid(), 'author' || (g % 7), 'c' || (g % :channels), "
            ":prefix || ' ' || g, now() - make_interval(mins => g) FROM generate_series(1, :n) g"
        ),
        {"n": count, "channels": channels, "prefix": prefix},
    )


async def embed_randomly_sql(
    conn: AsyncConnection | AsyncSession, table: str, dims: int, clusters: int = 20
) -> None:
    """Give every row of `table` a clustered pseudo-random unit vector (deterministic per row)."""
    await conn.execute(text("SELECT setseed(0.42)"))
    await conn.execute(
        text(
            f"""
            WITH centers AS ({centers_sql(clusters, dims)}), rows AS (
                SELECT id, row_number() OVER (ORDER BY id) % :clusters AS c FROM {table}
            )
            UPDATE {table} t SET embedding = {near_center_sql(0.3, "length(t.id::text)")},
            embedding_content_hash = t.content_hash, embedding_model = 'random'
            FROM rows JOIN centers ON centers.c = rows.c WHERE rows.id = t.id
            """
        ),
        {"clusters": clusters},
    )
