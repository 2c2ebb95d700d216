"""A vector search is one statement on an engine connection, and returns what it always did."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from app.core.config import DEFAULT_EF_SEARCH, Settings
from app.core.urls import to_asyncpg_url
from app.db import create_engine, session_factory
from app.embedding.entities import MESSAGES
from app.search import semantic_search_service as search
from tests.factories import embed_randomly_sql, insert_messages_sql

DIMS = 384  # the test database's column
ROWS, PENDING = 300, 7
DEEP = DEFAULT_EF_SEARCH + 50  # a page deeper than the default ef_search
LARGE = search.SearchTuning(index_min_rows=100)  # 307 rows: "large" here


@pytest.fixture(scope="module")
def url(make_db: Callable[[], str]) -> str:
    return to_asyncpg_url(make_db())


@pytest.fixture(scope="module")
async def filled(url: str) -> str:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await insert_messages_sql(conn, ROWS, channels=3)
            await embed_randomly_sql(conn, "messages", DIMS)
            await insert_messages_sql(conn, PENDING, prefix="waiting")  # not embedded yet
            await conn.execute(text("ANALYZE messages"))
    finally:
        await engine.dispose()
    return url


@pytest.fixture
async def app_engine(filled: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(url=filled, settings=Settings(), pool_size=1)
    yield engine
    await engine.dispose()


async def _know_table_facts(engine: AsyncEngine) -> None:
    """The search reads whether to insist on the HNSW index (index valid, table size) once per
    30 s per engine and table; these tests count the statements of the searches after that."""
    async with session_factory(engine)() as session:
        for tuning in (search.SearchTuning(), LARGE):
            await search.search(session, MESSAGES, _query(), limit=1, tuning=tuning)
            await session.commit()


@pytest.fixture(autouse=True)
async def table_facts_known(app_engine: AsyncEngine) -> None:
    await _know_table_facts(app_engine)


def _vector_codec(dbapi_connection: Any, _record: Any) -> None:
    from pgvector.asyncpg import register_vector

    dbapi_connection.run_async(register_vector)


def _query(seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).random(DIMS).astype(np.float32) - 0.5


class Statements:
    """The SQL an engine sends, in order."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.sql: list[str] = []
        event.listen(engine.sync_engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.sql.append(statement)


def _kind(sql: str) -> str:
    """ "page" for the statement of a vector page, else the statement's first words."""
    if sql.startswith("SELECT pending.count AS not_embedded"):
        return "page"
    return sql.split("(")[0].strip()


async def _exact(session: AsyncSession, query: np.ndarray, where: str = "TRUE") -> list[Any]:
    """Ids nearest first by a sequential scan: the truth the index search is held to."""
    await session.execute(text("SET LOCAL enable_indexscan = off"))
    rows = await session.execute(
        text(
            f"SELECT id FROM messages WHERE embedding IS NOT NULL AND {where} "
            "ORDER BY embedding <=> :q LIMIT 20"
        ),
        {"q": query},
    )
    return [row.id for row in rows]


async def test_default_search_is_one_statement_with_rows_and_count(
    app_engine: AsyncEngine,
) -> None:
    statements = Statements(app_engine)
    async with session_factory(app_engine)() as session:
        page = await search.search(session, MESSAGES, _query(), limit=10, offset=5)
        sent = list(statements.sql)
        settings = (
            await session.execute(
                text(
                    "SELECT current_setting('hnsw.ef_search'), "
                    "current_setting('hnsw.iterative_scan'), current_setting('plan_cache_mode')"
                )
            )
        ).one()
        truth = await _exact(session, _query())
    assert [_kind(s) for s in sent] == ["page"], sent
    assert tuple(settings) == (str(DEFAULT_EF_SEARCH), "relaxed_order", "force_custom_plan")
    assert page.ef_search == DEFAULT_EF_SEARCH and page.not_embedded == PENDING
    assert [hit.id for hit in page.hits] == truth[5:15]
    assert [hit.vector_rank for hit in page.hits] == list(range(6, 16))
    for hit in page.hits:
        assert hit.matched_by == ["vector"] and hit.score == pytest.approx(
            1 / (60 + hit.vector_rank)
        )
        assert set(hit.row) == {
            "id", "external_id", "author", "channel", "content", "sent_at", "extraction_status"
        }  # fmt: skip
        assert hit.row["id"] == hit.id and hit.row["content"].startswith("message ")
    similarities = [hit.similarity for hit in page.hits]
    assert similarities == sorted(similarities, reverse=True) and all(
        s is not None and -1 <= s <= 1 for s in similarities
    )


async def test_a_deeper_page_sets_ef_search_for_its_transaction_only(
    app_engine: AsyncEngine,
) -> None:
    statements = Statements(app_engine)
    async with session_factory(app_engine)() as session:
        page = await search.search(session, MESSAGES, _query(), limit=DEEP)
        ef = (await session.execute(text("SHOW hnsw.ef_search"))).scalar_one()
        await session.commit()
        assert [_kind(s) for s in statements.sql[:2]] == ["SELECT set_config", "page"]
        assert statements.sql[0].count("set_config") == 1  # only ef_search differs
        assert ef == str(DEEP) and page.ef_search == DEEP and len(page.hits) == DEEP
        after = (await session.execute(text("SHOW hnsw.ef_search"))).scalar_one()
    assert after == str(DEFAULT_EF_SEARCH)  # transaction-local: the connection keeps its own value


async def test_empty_page_still_counts_the_rows_not_embedded(app_engine: AsyncEngine) -> None:
    async with session_factory(app_engine)() as session:
        beyond = await search.search(session, MESSAGES, _query(), limit=10, threshold=1.01)
        channel = await search.search(
            session, MESSAGES, _query(), limit=10, filters=search.SearchFilters(channel="c9")
        )
    assert beyond.hits == [] and beyond.not_embedded == PENDING
    assert channel.hits == [] and channel.not_embedded == 0


async def test_filters_exclude_and_threshold_on_an_engine_without_the_settings(
    filled: str,
) -> None:
    # A connection not made by app.db.create_engine: the search sets every setting itself.
    engine = create_async_engine(filled, pool_size=1)
    event.listen(engine.sync_engine, "connect", _vector_codec)
    await _know_table_facts(engine)
    statements = Statements(engine)
    try:
        async with session_factory(engine)() as session:
            first = (await _exact(session, _query(), "channel = 'c1'"))[0]
            await session.rollback()
            statements.sql.clear()
            page = await search.search(
                session,
                MESSAGES,
                _query(),
                limit=5,
                filters=search.SearchFilters(channel="c1"),
                exclude=first,
                threshold=-1.0,
            )
            sent = list(statements.sql)
            truth = await _exact(session, _query(), f"channel = 'c1' AND id <> '{first}'")
    finally:
        await engine.dispose()
    assert [_kind(s) for s in sent] == ["SELECT set_config", "page"], sent
    assert [hit.id for hit in page.hits] == truth[:5]
    assert {hit.row["channel"] for hit in page.hits} == {"c1"}


async def test_hybrid_mode_fuses_full_text_and_vector(app_engine: AsyncEngine) -> None:
    async with session_factory(app_engine)() as session:
        page = await search.search(
            session, MESSAGES, _query(), query_text="waiting", limit=10, mode="hybrid"
        )
    by_source = {
        source: [h for h in page.hits if source in h.matched_by]
        for source in ("fulltext", "vector")
    }
    assert by_source["fulltext"] and all(
        h.row["content"].startswith("waiting") for h in by_source["fulltext"]
    )
    assert by_source["vector"] and page.not_embedded == PENDING
    assert [h.score for h in page.hits] == sorted((h.score for h in page.hits), reverse=True)


# ----------------------------------------------------------------- the search engine's plans


@pytest.fixture
async def search_engine(filled: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(url=filled, settings=Settings(), search=True, pool_size=1)
    await _know_table_facts(engine)
    yield engine
    await engine.dispose()


async def _plans(session: AsyncSession) -> tuple[str, str]:
    row = (
        await session.execute(
            text("SELECT current_setting('enable_seqscan'), current_setting('enable_sort')")
        )
    ).one()
    return row[0], row[1]


async def test_on_a_search_engine_a_large_table_is_searched_through_the_index_in_one_statement(
    search_engine: AsyncEngine, app_engine: AsyncEngine
) -> None:
    async with session_factory(search_engine)() as session:
        await search.search(session, MESSAGES, _query(), limit=1, tuning=LARGE)  # table facts
        await session.commit()
        statements = Statements(search_engine)
        page = await search.search(session, MESSAGES, _query(), limit=10, tuning=LARGE)
        sent = list(statements.sql)
        plans = await _plans(session)
        plan = await search.explain_vector_page(session, MESSAGES, _query(), tuning=LARGE)
        truth = await _exact(session, _query())
    assert [_kind(s) for s in sent] == ["page"], sent
    assert plans == ("off", "off")
    assert "Index Scan using messages_embedding_hnsw_idx" in plan, plan
    # The nearest rows are sorted exactly before the page's OFFSET (the scan's order is relaxed).
    assert "Sort Key: ((nearest.distance + " in plan, plan
    assert [hit.id for hit in page.hits] == truth[:10]
    # The same search on the write engine's connection turns the other plans off itself.
    statements = Statements(app_engine)
    async with session_factory(app_engine)() as session:
        await search.search(session, MESSAGES, _query(), limit=10, tuning=LARGE)
        sent = list(statements.sql)
        inside = await _plans(session)
        await session.commit()
        after = await _plans(session)
    assert [_kind(s) for s in sent] == ["SELECT set_config", "page"], sent
    assert sent[0].count("set_config") == 2  # enable_seqscan, enable_sort
    assert inside == ("off", "off") and after == ("on", "on")


async def test_on_a_search_engine_a_small_table_gets_any_plan_for_its_transaction(
    search_engine: AsyncEngine,
) -> None:
    statements = Statements(search_engine)
    async with session_factory(search_engine)() as session:
        page = await search.search(session, MESSAGES, _query(), limit=10)  # 307 < 1000 rows
        sent = list(statements.sql)
        inside = await _plans(session)
        await session.commit()
        after = await _plans(session)
    assert [_kind(s) for s in sent] == ["SELECT set_config", "page"], sent
    assert sent[0].count("set_config") == 2  # enable_seqscan, enable_sort: on
    assert inside == ("on", "on") and after == ("off", "off")
    assert len(page.hits) == 10


async def _active_space(session: AsyncSession) -> int:
    sql = "SELECT id FROM embedding_spaces WHERE entity = 'messages' AND state = 'active'"
    return int((await session.execute(text(sql))).scalar_one())


def _in_transaction(session_connection: Any) -> bool:
    """Whether the server holds a transaction open on this connection (asyncpg's own view)."""
    return bool(session_connection.driver_connection.is_in_transaction())


async def test_a_page_checks_its_space_in_its_own_statement_and_runs_in_autocommit(
    search_engine: AsyncEngine,
) -> None:
    async with session_factory(search_engine)() as session:
        space = await _active_space(session)
        await search.search(session, MESSAGES, _query(), limit=1, tuning=LARGE)  # table facts
        await session.commit()
        statements = Statements(search_engine)
        page = await search.search(
            session, MESSAGES, _query(), limit=10, tuning=LARGE, space_id=space
        )
        raw = await (await session.connection()).get_raw_connection()
        alone = _in_transaction(raw)
        await session.commit()
        checked_only = list(statements.sql)
        statements.sql.clear()
        await search.search(session, MESSAGES, _query(), limit=DEEP, tuning=LARGE, space_id=space)
        raw = await (await session.connection()).get_raw_connection()
        set_first = _in_transaction(raw)
        await session.commit()
        checked_and_set = list(statements.sql)
        plan = await search.explain_vector_page(
            session, MESSAGES, _query(), tuning=LARGE, space_id=space
        )
        await session.commit()
        with pytest.raises(search.SpaceMoved):
            await search.search(session, MESSAGES, _query(), limit=10, space_id=space + 1000)
    assert [_kind(s) for s in checked_only] == ["page"], checked_only
    assert "embedding_spaces" in checked_only[0] and len(page.hits) == 10
    assert not alone  # no BEGIN was sent: the page ran in autocommit
    # ef_search differs: set for the transaction, then the page (with its check) inside it
    assert [_kind(s) for s in checked_and_set] == ["SELECT set_config", "page"]
    assert "embedding_spaces" not in checked_and_set[0] and "embedding_spaces" in checked_and_set[1]
    assert set_first
    # the check runs before the rest: a moved space executes neither the count nor the scan
    assert "One-Time Filter" in plan and "embedding_spaces" in plan, plan


async def test_a_page_waiting_for_a_cutover_sees_the_space_it_committed(
    search_engine: AsyncEngine, filled: str
) -> None:
    """The page names the table, so it takes the table's lock before its snapshot: a cutover that
    holds the lock while it moves the spaces either committed before the page read them, or runs
    after it. Here the page, sent alone in autocommit (no statement before it), waits for it,
    then reads the cutover's spaces and moves on."""
    import asyncio

    import asyncpg

    from app.core.urls import to_libpq_url

    async with session_factory(search_engine)() as session:
        space = await _active_space(session)
        await session.commit()
        cutover = await asyncpg.connect(to_libpq_url(filled))
        watcher = await asyncpg.connect(to_libpq_url(filled))
        page: asyncio.Task[search.SearchPage] | None = None
        statements = Statements(search_engine)
        try:
            async with cutover.transaction():
                await cutover.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
                await cutover.execute(
                    "UPDATE embedding_spaces SET state = 'previous' WHERE id = $1", space
                )
                page = asyncio.create_task(
                    search.search(
                        session, MESSAGES, _query(), limit=10, tuning=LARGE, space_id=space
                    )
                )
                waits = "SELECT count(*) FROM pg_locks WHERE relation = 'messages'::regclass "
                waits += "AND NOT granted"
                async with asyncio.timeout(30):
                    while not await watcher.fetchval(waits):
                        assert not page.done(), page
                        await asyncio.sleep(0.02)
            with pytest.raises(search.SpaceMoved):
                await page
            raw = await (await session.connection()).get_raw_connection()
            assert not _in_transaction(raw)
            assert [_kind(s) for s in statements.sql] == ["page"], statements.sql
        finally:
            if page is not None and not page.done():
                page.cancel()
            await cutover.execute(
                "UPDATE embedding_spaces SET state = 'active' WHERE id = $1", space
            )
            await cutover.close()
            await watcher.close()


async def test_hybrid_on_a_search_engine_runs_its_full_text_step_with_any_plan(
    search_engine: AsyncEngine,
) -> None:
    async with session_factory(search_engine)() as session:
        page = await search.search(
            session, MESSAGES, _query(), query_text="waiting", limit=10, mode="hybrid", tuning=LARGE
        )
        inside = await _plans(session)
        await session.commit()
        after = await _plans(session)
    fulltext = [h for h in page.hits if "fulltext" in h.matched_by]
    assert fulltext and all(h.row["content"].startswith("waiting") for h in fulltext)
    assert any("vector" in h.matched_by for h in page.hits)
    assert inside == ("on", "on") and after == ("off", "off")


@pytest.mark.parametrize("pool_mode", ["session", "transaction"])
async def test_a_statement_runs_alone_except_behind_a_transaction_pooler(
    filled: str, pool_mode: str
) -> None:
    """`standalone` sends no BEGIN on a direct connection; behind a pooler in transaction mode
    the statement keeps its transaction (prepared and run in two messages, which only a
    transaction keeps on one server session)."""
    from app.db import standalone

    engine = create_engine(url=filled, settings=Settings(database_pool_mode=pool_mode))
    try:
        async with engine.connect() as conn:
            async with standalone(conn):
                assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
            raw = await conn.get_raw_connection()
            in_transaction = _in_transaction(raw)
            await conn.commit()
    finally:
        await engine.dispose()
    assert in_transaction == (pool_mode == "transaction")
