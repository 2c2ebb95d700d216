"""Search at scale: a million rows through the app's own search, and halfvec beside vector.

Per size, in a scratch database: `alembic upgrade 0001` with the size's dimensions, the
clustered vectors of bench/search.py loaded with COPY, then the HNSW index built by the
project's revision (`alembic upgrade head`, timed as users run it). Then, against numpy's exact
neighbours:

- the app's `semantic_search_service.search` over a sweep of ef_search and of page offsets
  (deep pages), with the plan of every cell read through the service's own statement
  (`explain_vector_page`): the service insists on the index, so no cell may fall back to a
  sequential scan;
- the bare query over the same sweep with the planner left alone (where it would flip);
- the app against the bare query at the default ef_search.

halfvec (pgvector >= 0.7) is measured beside vector at 100k x 1536 on the same data: the
column is converted and the index built with halfvec_cosine_ops by this benchmark's SQL (the
project's revision builds vector columns).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import asyncpg
import numpy as np
from pgvector import Vector
from pgvector.asyncpg import register_vector
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.urls import to_asyncpg_url
from app.indexes.catalog import VectorIndex
from bench import search as base
from bench.pipeline import alembic
from bench.scratch import scratch_database
from bench.stats import load_average, target

if TYPE_CHECKING:
    from app.search.semantic_search_service import SearchTuning

FULL = ((1_000_000, 384),)
QUICK = ((20_000, 384),)
HALFVEC_FULL = (100_000, 1536)
HALFVEC_QUICK = (10_000, 1536)
EFS = (10, 20, 40, 64, 100, 200, 400)
OFFSETS = (0, 100, 500, 900)
HALFVEC_EFS = (40, 64, 100, 200)
# The halfvec index beside the revision's, with the project's SQL (and so the same graph).
HALFVEC_INDEX = VectorIndex(
    "messages_embedding_halfvec_idx", "messages", opclass="halfvec_cosine_ops"
)
QUERIES = 200
ROUNDS = 3


def exact_ranks(queries: np.ndarray, rows: np.ndarray, depth: int) -> np.ndarray:
    """Row indexes of the `depth` nearest rows of each query, nearest first (in slices)."""
    out = np.zeros((len(queries), depth), dtype=np.int64)
    for start in range(0, len(queries), 20):
        part = queries[start : start + 20]
        out[start : start + 20] = base.exact_top(part, rows, depth)
    return out


def displacement(found: list[list[int]], truth: np.ndarray, offset: int) -> float:
    """Median distance between where a page puts a row and its exact rank.

    A deep page's exact slice is fragile: an approximate search that misses a few of the
    hundreds of rows before it shifts every rank by as many, so its slice recall is low even
    when the page holds the right neighbourhood. A row beyond the exact ranks known counts as
    that depth away.
    """
    depth = truth.shape[1]
    moves = []
    for q, ids in enumerate(found):
        ranks = {int(row): rank for rank, row in enumerate(truth[q])}
        for position, row in enumerate(ids, start=offset):
            moves.append(abs(ranks.get(row, depth) - position))  # type: ignore[operator]
    return float(np.median(moves)) if moves else 0.0


def hits_histogram(found: list[list[int]], truth: np.ndarray) -> dict[str, int]:
    """How many queries found how many of their exact top-k: whole misses or thin ones."""
    values, counts = np.unique(base.hits_per_query(found, truth), return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}


@dataclass(frozen=True)
class Cell:
    ef: int
    offset: int

    def tuning(self, settings: Settings) -> SearchTuning:
        """The service's tuning from `settings`, at this cell's ef_search."""
        from app.search.semantic_search_service import SearchTuning

        return replace(SearchTuning.from_settings(settings), ef_search=self.ef)


async def _time_cell(
    session: AsyncSession, queries: np.ndarray, cell: Cell, settings: Settings
) -> tuple[list[float], list[list[int]]]:
    """One round of a cell: every query through the app's search, then commit, timed."""
    from app.embedding.entities import MESSAGES
    from app.search.semantic_search_service import search

    tuning = cell.tuning(settings)
    times, found = [], []
    for query in queries:
        began = time.perf_counter()
        page = await search(
            session, MESSAGES, query, limit=base.K, offset=cell.offset, tuning=tuning
        )
        await session.commit()
        times.append((time.perf_counter() - began) * 1000)
        found.append([base.row_index(hit.id) for hit in page.hits])
    return times, found


async def _explain_cell(
    session: AsyncSession, queries: np.ndarray, cell: Cell, settings: Settings
) -> str:
    from app.embedding.entities import MESSAGES
    from app.search.semantic_search_service import explain_vector_page

    plan = await explain_vector_page(
        session,
        MESSAGES,
        queries[0],
        limit=base.K,
        offset=cell.offset,
        tuning=cell.tuning(settings),
    )
    await session.commit()
    return plan


def _cell_result(
    cell: Cell, plan: str, latencies: list[list[float]], found: list[list[int]], truth: np.ndarray
) -> dict[str, Any]:
    """p50/p95 over rounds, recall of the page against the exact ranks, and the plan."""
    wanted = truth[:, cell.offset : cell.offset + base.K]
    return {
        "ef_search": cell.ef,
        "offset": cell.offset,
        "recall": round(base.recall(found, wanted), 4),
        "hits_per_query": hits_histogram(found, wanted),
        "rank_displacement": displacement(found, truth, cell.offset),
        "uses_hnsw_index": "Index Scan using messages_embedding_hnsw_idx" in plan,
        "seq_scan": "Seq Scan on messages" in plan,
        **base.summary(latencies),
    }


async def sweep_cells(
    session: AsyncSession,
    queries: np.ndarray,
    truth: np.ndarray,
    cells: list[Cell],
    settings: Settings,
    rounds: int,
) -> dict[Cell, dict[str, Any]]:
    """The app's search over `cells`: every cell's plan and an untimed warm-up of 20 queries
    first; then each round times every cell, in the order of `base.round_orders` (A..Z, then
    Z..A), so that a slow minute of a shared machine spreads over the cells' rounds instead of
    landing on a few cells whole (measured in session 13: the same search timed 4.9 and 6.5 ms
    in two sweeps of one database, minutes apart)."""
    plans = {}
    for cell in cells:
        plans[cell] = await _explain_cell(session, queries, cell, settings)
        await _time_cell(session, queries[:20], cell, settings)
    latencies: dict[Cell, list[list[float]]] = {cell: [] for cell in cells}
    found: dict[Cell, list[list[int]]] = {}
    for order in base.round_orders(cells, rounds):
        for cell in order:
            times, pages = await _time_cell(session, queries, cell, settings)
            latencies[cell].append(times)
            found.setdefault(cell, pages)
    return {
        cell: _cell_result(cell, plans[cell], latencies[cell], found[cell], truth) for cell in cells
    }


async def app_sweep(
    url: str, settings: Settings, data: base.Dataset, truth: np.ndarray, rounds: int
) -> dict[str, Any]:
    """The service over ef_search (first page) and over offsets (default ef_search), after one
    warm pass (`_warm`), every cell in every round (`sweep_cells`)."""
    from app.db import create_engine

    ef_cells = [Cell(ef, 0) for ef in sorted({*EFS, settings.hnsw_ef_search})]
    page_cells = [Cell(settings.hnsw_ef_search, offset) for offset in OFFSETS]
    cells = list(dict.fromkeys([*ef_cells, *page_cells]))  # the first page is an ef cell too
    engine = create_engine(url=to_asyncpg_url(url), settings=settings, search=True, pool_size=1)
    try:
        async with engine.connect() as conn:
            session = AsyncSession(bind=conn, expire_on_commit=False)
            warm_seconds = await _warm(session, data, settings)
            results = await sweep_cells(session, data.queries, truth, cells, settings, rounds)
            await session.close()
    finally:
        await engine.dispose()
    return {
        "ef": [results[cell] for cell in ef_cells],
        "pages": [results[cell] for cell in page_cells],
        "warm_seconds": warm_seconds,
    }


async def _warm(session: AsyncSession, data: base.Dataset, settings: Settings) -> float:
    """One untimed pass of every query at the sweep's widest ef_search and deepest page, so
    the first cells measure a warm server as the later ones do (the index, freshly built, is
    not in shared_buffers yet: measured before this pass, the app's first sweep at 6.4 ms
    against 4.0 ms for the bare query's sweep after it at the same ef_search)."""
    began = time.perf_counter()
    for cell in (Cell(max(EFS), 0), Cell(settings.hnsw_ef_search, max(OFFSETS))):
        await _time_cell(session, data.queries, cell, settings)
    return round(time.perf_counter() - began, 1)


async def load_and_migrate(url: str, data: base.Dataset, dims: int) -> dict[str, Any]:
    """0001, COPY, then the revision that builds the index: `alembic upgrade head`, timed."""
    first = await asyncio.to_thread(alembic, url, dims, "upgrade", "0001")
    if first.returncode != 0:
        raise RuntimeError(first.stderr)
    conn = await asyncpg.connect(url)
    try:
        await register_vector(conn)
        load_seconds = await base.load(conn, data)
        await conn.execute("VACUUM ANALYZE messages")
    finally:
        await conn.close()
    began = time.perf_counter()
    result = await asyncio.to_thread(alembic, url, dims, "upgrade", "head")
    seconds = time.perf_counter() - began
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    conn = await asyncpg.connect(url)
    try:
        size = await conn.fetchval(f"SELECT pg_relation_size('{base.INDEX.name}')")
        await conn.execute("VACUUM ANALYZE messages")
        # The build leaves the whole index dirty in shared_buffers; without this the
        # checkpointer writes those 2 GB during the first sweep (seen: a checkpoint writing for
        # 214 s while the app's cells ran at twice the bare query's time). Steady state first.
        checkpoint = time.perf_counter()
        await conn.execute("CHECKPOINT")
        checkpoint_seconds = time.perf_counter() - checkpoint
    finally:
        await conn.close()
    decision = next((line for line in result.stderr.splitlines() if "building (" in line), "")
    return {
        "load_seconds": round(load_seconds, 1),
        "upgrade_head_seconds": round(seconds, 1),
        "memory_decision": decision.split("): ", 1)[-1],
        "index_mb": round(int(size) / 1048576, 1),
        "checkpoint_seconds": round(checkpoint_seconds, 1),
    }


async def measure(
    settings: Settings, rows: int, dims: int, *, queries: int, rounds: int
) -> dict[str, Any]:
    data = base.make_dataset(rows, dims, queries)
    truth = exact_ranks(data.queries, data.rows, max(OFFSETS) + 10 * base.K)
    name = f"bench_scale_{rows}_{dims}_{uuid.uuid4().hex[:6]}"
    async with scratch_database(settings, name) as url:
        built = await load_and_migrate(url, data, dims)
        apps = await app_sweep(url, settings, data, truth, rounds)
        conn = await asyncpg.connect(url)
        try:
            await register_vector(conn)
            await conn.execute(base.CUSTOM_PLANS)
            bare = await base.sweep(
                conn,
                [Vector(q) for q in data.queries],
                truth[:, : base.K],
                efs=sorted({*EFS, settings.hnsw_ef_search}),
                rounds=rounds,
                exact_queries=20,
            )
            reach = await reachability(conn, data)
            shared_buffers = await conn.fetchval("SHOW shared_buffers")
        finally:
            await conn.close()
        versus = await base.app_vs_bare(
            url, settings, data, ef=settings.hnsw_ef_search, rounds=rounds
        )
    return {
        "rows": rows,
        "dims": dims,
        "label": f"{rows:,} x {dims}",
        **built,
        "app": apps,
        "bare": bare,
        "app_vs_bare": versus,
        "reachability": reach,
        "shared_buffers": shared_buffers,
        "load_average": load_average(),
    }


REACH_SAMPLE = 500
REACH_EF = 400


async def reachability(conn: asyncpg.Connection, data: base.Dataset) -> dict[str, Any]:
    """Share of sampled rows the index returns for their own vector at a wide ef_search.

    A row the graph leads to comes back first for its own vector; one it never leads to (no
    edge points at it, or only from a region the search does not enter) cannot be returned by
    any query, whatever ef_search: the ceiling of recall that ef_search cannot lift.
    """
    rng = np.random.default_rng(11)
    sample = rng.choice(len(data.rows), min(REACH_SAMPLE, len(data.rows)), replace=False)
    await conn.execute(f"SET hnsw.ef_search = {REACH_EF}")
    _, found = await base.timed(conn, base.BARE_SQL, [Vector(data.rows[i]) for i in sample])
    hits = sum(int(i) in ids for i, ids in zip(sample, found, strict=True))
    return {"sample": len(sample), "ef_search": REACH_EF, "found_by_own_vector": hits}


async def _bare_recall(
    conn: asyncpg.Connection, sql: str, data: base.Dataset, truth: np.ndarray, ef: int, rounds: int
) -> dict[str, Any]:
    await conn.execute(f"SET hnsw.ef_search = {int(ef)}")
    vectors = [Vector(q) for q in data.queries]
    await base.timed(conn, sql, vectors)  # warm the index pages, untimed
    plan = "\n".join(row[0] for row in await conn.fetch(f"EXPLAIN {sql}", vectors[0]))
    latencies: list[list[float]] = []
    found: list[list[int]] = []
    for _ in range(rounds):
        ms, ids = await base.timed(conn, sql, vectors)
        latencies.append(ms)
        found = found or ids
    return {
        "ef_search": ef,
        "recall": round(base.recall(found, truth), 4),
        "uses_hnsw_index": "Index Scan" in str(plan),
        **base.summary(latencies),
    }


async def halfvec_beside_vector(
    settings: Settings, rows: int, dims: int, *, queries: int, rounds: int
) -> dict[str, Any]:
    """The same rows and queries as vector and as halfvec: build, size, recall, latency."""
    data = base.make_dataset(rows, dims, queries, seed=1)
    truth = base.exact_top(data.queries, data.rows)
    name = f"bench_halfvec_{rows}_{dims}_{uuid.uuid4().hex[:6]}"
    async with scratch_database(settings, name) as url:
        built = await load_and_migrate(url, data, dims)
        conn = await asyncpg.connect(url)
        try:
            await register_vector(conn)
            await conn.execute(base.CUSTOM_PLANS)
            vector = [
                await _bare_recall(conn, base.BARE_SQL, data, truth, ef, rounds)
                for ef in HALFVEC_EFS
            ]
            await conn.execute(base.INDEX.drop_sql)
            await conn.execute(
                f"ALTER TABLE messages ALTER COLUMN embedding TYPE halfvec({dims}) "
                f"USING embedding::halfvec({dims})"
            )
            await conn.execute("VACUUM ANALYZE messages")
            await conn.execute(
                f"SET maintenance_work_mem = '{settings.index_maintenance_work_mem}'"
            )
            await conn.execute(
                f"SET max_parallel_maintenance_workers = {settings.index_parallel_workers}"
            )
            began = time.perf_counter()
            await conn.execute(HALFVEC_INDEX.create_statement(concurrently=False))
            half_build = time.perf_counter() - began
            half_size = await conn.fetchval(f"SELECT pg_relation_size('{HALFVEC_INDEX.name}')")
            sql = f"SELECT id FROM messages ORDER BY embedding <=> $1::vector::halfvec({dims}) LIMIT 10"
            half = [await _bare_recall(conn, sql, data, truth, ef, rounds) for ef in HALFVEC_EFS]
        finally:
            await conn.close()
    return {
        "rows": rows,
        "dims": dims,
        "vector": {
            "build_seconds": built["upgrade_head_seconds"],
            "index_mb": built["index_mb"],
            "ef": vector,
        },
        "halfvec": {
            "build_seconds": round(half_build, 1),
            "index_mb": round(int(half_size) / 1048576, 1),
            "ef": half,
        },
    }


async def run(settings: Settings, *, quick: bool) -> dict[str, Any]:
    queries = 50 if quick else QUERIES
    rounds = 1 if quick else ROUNDS
    sizes = QUICK if quick else FULL
    results = [await measure(settings, r, d, queries=queries, rounds=rounds) for r, d in sizes]
    half_rows, half_dims = HALFVEC_QUICK if quick else HALFVEC_FULL
    half = await halfvec_beside_vector(
        settings, half_rows, half_dims, queries=queries, rounds=rounds
    )
    return {
        "config": {
            "quick": quick,
            "queries": queries,
            "rounds": rounds,
            "ef_search_default": settings.hnsw_ef_search,
            "max_scan_tuples": settings.hnsw_max_scan_tuples,
            "search_index_min_rows": settings.search_index_min_rows,
            "maintenance_work_mem": settings.index_maintenance_work_mem,
            "maintenance_work_mem_max": settings.index_maintenance_work_mem_max,
            "hnsw_m": settings.index_hnsw_m,
            "hnsw_ef_construction": settings.index_hnsw_ef_construction,
        },
        "sizes": results,
        "halfvec": half,
    }


# --------------------------------------------------------------------------- report


def _p50(cell: dict[str, Any]) -> float:
    return float(cell["p50_ms"]["median"])


def _cells(size: dict[str, Any]) -> list[dict[str, Any]]:
    return [*size["app"]["ef"], *size["app"]["pages"]]


def targets(section: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    ef = section["config"]["ef_search_default"]
    for size in section["sizes"]:
        at = next(c for c in size["app"]["ef"] if c["ef_search"] == ef)
        cells = _cells(size)
        median = float(np.median([_p50(c) for c in cells]))
        flipped = [c for c in cells if not c["uses_hnsw_index"]]
        slow = [c for c in cells if _p50(c) > 3 * median and not c["uses_hnsw_index"]]
        ratio = size["app_vs_bare"]["ratio_p50"]["median"]
        rows += [
            target(
                f"app search at {size['label']}, ef_search {ef}: recall@10 and p50",
                "recall ≥ 0.99, p50 ≤ 5 ms",
                f"recall {at['recall']:.3f}, p50 {_p50(at):.2f} ms",
                at["recall"] >= 0.99 and _p50(at) <= 5.0,
            ),
            target(
                f"every cell of the app's sweep at {size['label']} uses the HNSW index",
                "no sequential scan; no cell > 3× the median because of a plan change",
                f"{len(cells) - len(flipped)} of {len(cells)} cells on the index; "
                f"slowest {max(_p50(c) for c in cells):.2f} ms vs median {median:.2f} ms",
                not flipped and not slow,
            ),
            target(
                f"app search vs bare query at {size['label']}, ef_search {ef}",
                "≤ 1.2×",
                f"{ratio:.2f}×",
                ratio <= 1.2,
            ),
        ]
    return rows


def _plan(cell: dict[str, Any]) -> str:
    if cell["uses_hnsw_index"]:
        return "HNSW index"
    return "**seq scan**" if cell.get("seq_scan", True) else "other"


def _row(cell: dict[str, Any], key: str) -> str:
    return (
        f"| {cell[key]} | {cell['recall']:.4f} | {base._cell(cell['p50_ms'])} | "
        f"{base._cell(cell['p95_ms'])} | {_plan(cell)} |"
    )


def _hits(cell: dict[str, Any]) -> str:
    """Queries with all 10, 9, 1-8 and none of their exact top-10."""
    hist = {int(k): v for k, v in cell.get("hits_per_query", {}).items()}
    some = sum(v for k, v in hist.items() if 0 < k < base.K - 1)
    return f"{hist.get(base.K, 0)} / {hist.get(base.K - 1, 0)} / {some} / {hist.get(0, 0)}"


def _ef_table(size: dict[str, Any]) -> list[str]:
    return [
        "| ef_search | recall@10 | queries with 10 / 9 / 1-8 / 0 of their top-10 | p50 ms "
        "| p95 ms | plan |",
        "|---:|---:|---|---:|---:|---|",
        *[
            f"| {c['ef_search']} | {c['recall']:.4f} | {_hits(c)} | {base._cell(c['p50_ms'])} | "
            f"{base._cell(c['p95_ms'])} | {_plan(c)} |"
            for c in size["app"]["ef"]
        ],
    ]


def _reach(size: dict[str, Any]) -> list[str]:
    reach = size.get("reachability")
    if not reach:
        return []
    share = reach["found_by_own_vector"] / reach["sample"]
    return [
        f"Reachability: {reach['found_by_own_vector']} of {reach['sample']} sampled rows "
        f"({share:.1%}) come back first for their own vector at ef_search {reach['ef_search']}; "
        "a row the graph never leads to caps recall whatever ef_search. Load average "
        f"(1, 5, 15 min) at the end of the size: {size.get('load_average', 'not recorded')}.",
        "",
    ]


def _seq(cell: dict[str, Any]) -> str:
    return "" if cell.get("uses_hnsw_index", True) else " (seq scan)"


def _page_row(cell: dict[str, Any]) -> str:
    plan = "HNSW index" if cell["uses_hnsw_index"] else "**seq scan**"
    return (
        f"| {cell['offset']} | {cell['recall']:.4f} | {cell.get('rank_displacement', 0):.1f} | "
        f"{base._cell(cell['p50_ms'])} | {base._cell(cell['p95_ms'])} | {plan} |"
    )


def _tuned(config: dict[str, Any]) -> str:
    """The settings this run changed from the defaults, and why (empty when none)."""
    defaults = Settings.model_fields
    changed = [
        f"{env}={config[key]}"
        for key, env, field in (
            ("hnsw_ef_construction", "INDEX_HNSW_EF_CONSTRUCTION", "index_hnsw_ef_construction"),
            ("hnsw_m", "INDEX_HNSW_M", "index_hnsw_m"),
            ("ef_search_default", "HNSW_EF_SEARCH", "hnsw_ef_search"),
        )
        if key in config and config[key] != defaults[field].default
    ]
    if not changed:
        return ""
    return (
        f"**Tuned settings: {', '.join(changed)}.** The default graph (m = 16, ef_construction = "
        "64, the revision's) builds several times faster; its recall@10 at ef_search 100 is "
        "0.98-0.99 at 100,000 rows of this generator (build to build) and 0.96 at 200,000 (384 "
        "dims, 2026-12-07); at a million rows it leaves some rows and clusters where no search "
        "leads, and recall stops near 0.96 whatever ef_search (that "
        "build's figures and the build times side by side are in docs/bench/analysis.md). A "
        "deployment of this size sets a larger ef_construction; README: The graph's parameters."
    )


def render(section: dict[str, Any], plots: Any) -> str:  # noqa: ARG001 - tables only
    config = section["config"]
    graph = f"m = {config.get('hnsw_m', 16)}, ef_construction = {config.get('hnsw_ef_construction', 64)}"
    tuned = _tuned(config)
    out = [
        "## Search at scale: the app's search at a million rows, halfvec beside vector",
        "",
        f"{config['queries']} held-out queries × {config['rounds']} rounds (medians of the "
        "rounds' p50/p95, range in brackets), k = 10, the clustered vectors of the search "
        "section, COPYed in random cluster order (as messages arrive, not grouped by topic). "
        "Per query, how many of its exact top-10 the page holds: whole misses (0) are queries "
        "the graph walk never brings near, thin ones (9) a row missed. The index is built by `alembic upgrade head` (the revision) on the loaded "
        f"table ({graph}), then VACUUM ANALYZE and a CHECKPOINT (untimed: the cells measure searches in "
        "steady state, not while the checkpointer writes out the freshly built index), and one "
        "untimed pass of the app's search over every query at the widest ef_search and the "
        "deepest page before the first cell (the freshly built index is not in shared_buffers "
        "yet; without that pass the first sweep measured a cold server); each "
        "cell's plan is read with `explain_vector_page`, the service's own statement. The "
        "app's rounds are interleaved across its cells (every cell once per round, the order "
        "reversed each round), so a slow minute of the machine lands on one round of many "
        "cells rather than on every round of one.",
        "",
        *([tuned, ""] if tuned else []),
    ]
    for size in section["sizes"]:
        out += [
            f"### {size['label']}",
            "",
            f"Load (COPY) {size['load_seconds']:.0f} s; `alembic upgrade head` "
            f"{size['upgrade_head_seconds']:.0f} s ({size['memory_decision']}); index "
            f"{size['index_mb']:,.0f} MB; server shared_buffers "
            f"{size.get('shared_buffers', '128MB')}; warm pass "
            f"{size['app'].get('warm_seconds', '-')} s. App vs bare at ef_search {config['ef_search_default']}: "
            f"{size['app_vs_bare']['ratio_p50']['median']:.2f}× "
            f"({size['app_vs_bare']['app']['p50_ms']['median']:.2f} vs "
            f"{size['app_vs_bare']['bare']['p50_ms']['median']:.2f} ms).",
            "",
            "The app's search (first page) across ef_search:",
            "",
            *_ef_table(size),
            "",
            *_reach(size),
            f"Deep pages (ef_search {config['ef_search_default']}, raised to limit + offset; "
            "offset 0 is the ef_search cell above, timed once):",
            "",
            "| offset | recall of the exact slice | median rank displacement | p50 ms | p95 ms | plan |",
            "|---:|---:|---:|---:|---:|---|",
            *[_page_row(c) for c in size["app"]["pages"]],
            "",
            "The bare query with the planner left alone (what the service no longer risks):",
            "",
            "| ef_search | recall@10 | p50 ms | plan |",
            "|---:|---:|---:|---|",
            *[
                f"| {e['ef_search']} | {e['recall']:.4f} | {base._cell(e['p50_ms'])} | "
                f"{'HNSW index' if e['uses_hnsw_index'] else '**seq scan**'} |"
                for e in size["bare"]["ef"]
            ],
            f"| exact scan | {size['bare']['exact']['agreement_with_numpy']:.4f} | "
            f"{base._cell(size['bare']['exact']['p50_ms'])} | seq scan |",
            "",
        ]
    half = section["halfvec"]
    out += [
        f"### halfvec beside vector at {half['rows']:,} x {half['dims']}",
        "",
        f"vector: index {half['vector']['index_mb']:,.0f} MB, built in "
        f"{half['vector']['build_seconds']:.0f} s (`alembic upgrade head`); halfvec: index "
        f"{half['halfvec']['index_mb']:,.0f} MB, built in {half['halfvec']['build_seconds']:.0f} s "
        "(plain CREATE INDEX with halfvec_cosine_ops). Bare queries, same data and queries:",
        "",
        "| ef_search | vector recall@10 | vector p50 ms | halfvec recall@10 | halfvec p50 ms |",
        "|---:|---:|---:|---:|---:|",
        # a cell whose plan was a sequential scan is marked: these are bare, unforced queries
    ]
    for v, h in zip(half["vector"]["ef"], half["halfvec"]["ef"], strict=True):
        out.append(
            f"| {v['ef_search']} | {v['recall']:.4f} | {base._cell(v['p50_ms'])}{_seq(v)} | "
            f"{h['recall']:.4f} | {base._cell(h['p50_ms'])}{_seq(h)} |"
        )
    out.append("")
    return "\n".join(out)
