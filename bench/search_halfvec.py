"""A million rows of 1536 dims stored as halfvec: load, the product's index build, the app's search.

The messages table is created by `alembic upgrade head` (empty), its active embedding space set
to halfvec storage and the column converted (what a switch to a halfvec space leaves: the switch
itself re-embeds every row through the provider, out of reach at this size), the rows COPYed in
chunks, then the index built by the product's builder as revision 0002 runs it
(`IndexBuilder.ensure`: it builds the active space's opclass, halfvec_cosine_ops, with its own
memory decision). The app's `semantic_search_service.search` is then swept over ef_search,
the plan of every cell read through the service's own statement.

Memory: the vectors are generated, compared with the queries and COPYed a chunk at a time, so
the process never holds the 1M x 1536 matrix (6.1 GB as float32); see `memory_budget`.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import numpy as np
from pgvector import HalfVector
from pgvector.asyncpg import register_vector

from app.core.config import Settings
from app.core.urls import to_asyncpg_url
from bench import search as base
from bench import search_scale as scale
from bench.pipeline import alembic
from bench.scratch import scratch_database
from bench.stats import load_average, target

FULL = (1_000_000, 1536)
QUICK = (20_000, 1536)
CHUNK = 25_000
EFS = (40, 64, 100, 200, 400)
GB = 1024**3


class Stream:
    """The clustered distribution of bench/search.py, drawn a chunk at a time.

    One set of centres and one linear map for the whole table, as `base.clustered` draws them;
    the points of each chunk are fresh draws, in random cluster order (rows arrive in time
    order, not grouped by topic).
    """

    def __init__(self, dims: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.centres = self.rng.standard_normal((base.CLUSTERS, base.LATENT_DIMS), dtype=np.float32)
        self.mapping = self.rng.standard_normal((base.LATENT_DIMS, dims), dtype=np.float32)

    def draw(self, count: int) -> np.ndarray:
        latent = base.latent_points(self.centres, count, self.rng)
        return base.mapped(latent, self.mapping, self.rng)


class TopK:
    """The exact k nearest rows of each query, merged chunk by chunk."""

    def __init__(self, queries: np.ndarray, k: int) -> None:
        self.queries = queries
        self.k = k
        self.ids = np.zeros((len(queries), 0), dtype=np.int64)
        self.sims = np.zeros((len(queries), 0), dtype=np.float32)

    def add(self, rows: np.ndarray, first: int) -> None:
        sims = np.concatenate([self.sims, self.queries @ rows.T], axis=1)
        ids = np.concatenate(
            [
                self.ids,
                np.broadcast_to(np.arange(first, first + len(rows)), (len(sims), len(rows))),
            ],
            axis=1,
        )
        keep = np.argpartition(-sims, self.k - 1, axis=1)[:, : self.k]
        picked = np.take_along_axis(sims, keep, axis=1)
        keep = np.take_along_axis(keep, np.argsort(-picked, axis=1), axis=1)
        self.sims = np.take_along_axis(sims, keep, axis=1)
        self.ids = np.take_along_axis(ids, keep, axis=1)


def memory_budget(rows: int, dims: int, maintenance_work_mem: int) -> dict[str, float]:
    """GB each part takes: what has to fit in the machine's memory at once (page cache aside)."""
    value = 2 * dims + 8  # a halfvec: 2 bytes a dimension and a header; over 2 kB, so TOASTed
    return {
        "float32_matrix_not_held": rows * dims * 4 / GB,
        "chunk_in_process": CHUNK * dims * 4 * 4 / GB,  # the chunk, its noise and two temporaries
        "table_toast": rows * (value + 120) / GB,  # the value out of line, the heap row and TOAST
        "index_estimate": rows * (value + 16 * 2 * 16 + 64) / GB,  # the vector and neighbour tids
        "graph_in_memory": rows * (162 + 17 + 16 * 16 * 2.07 + 8 + 2 * dims) / GB,
        "maintenance_work_mem": maintenance_work_mem / GB,
    }


def _records(chunk: np.ndarray, first: int, now: datetime) -> list[tuple[Any, ...]]:
    return [
        base.message_record(first + offset, (first + offset) % base.CHANNELS, HalfVector(v), now)
        for offset, v in enumerate(chunk.astype(np.float16))
    ]


async def _halfvec_schema(url: str, dims: int) -> None:
    """head, then the active space's storage halfvec and its column converted (still empty)."""
    result = await asyncio.to_thread(alembic, url, dims, "upgrade", "head")
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(base.INDEX.drop_sql)
        await conn.execute(
            f"ALTER TABLE messages ALTER COLUMN embedding TYPE halfvec({dims}) "
            f"USING embedding::halfvec({dims})"
        )
        await conn.execute(
            "UPDATE embedding_spaces SET storage = 'halfvec' "
            "WHERE entity = 'messages' AND state = 'active'"
        )
    finally:
        await conn.close()


async def load(url: str, rows: int, dims: int, queries: np.ndarray) -> dict[str, Any]:
    """Draw, rank against the queries and COPY a chunk at a time; returns truth and timings."""
    stream = Stream(dims, seed=2)
    exact = TopK(queries, base.K)  # against the float32 vectors
    rounded = TopK(queries, base.K)  # against the halfvec values stored
    conn = await asyncpg.connect(url)
    copy_seconds = 0.0
    now = datetime.now(UTC)
    try:
        await register_vector(conn)
        for first in range(0, rows, CHUNK):
            chunk = stream.draw(min(CHUNK, rows - first))
            exact.add(chunk, first)
            rounded.add(chunk.astype(np.float16).astype(np.float32), first)
            records = _records(chunk, first, now)
            began = time.perf_counter()
            await conn.copy_records_to_table("messages", records=records, columns=base.COPY_COLUMNS)
            copy_seconds += time.perf_counter() - began
        await conn.execute("VACUUM ANALYZE messages")
        table = await conn.fetchval("SELECT pg_total_relation_size('messages')")
    finally:
        await conn.close()
    return {
        "truth": exact.ids,
        "truth_halfvec": rounded.ids,
        "copy_seconds": round(copy_seconds, 1),
        "table_gb": round(int(table) / GB, 2),
    }


async def build(url: str, settings: Settings) -> dict[str, Any]:
    """The product's builder as revision 0002 runs it; seconds, its notes and the index size."""
    from app.db import migration_engine
    from app.indexes.build import BuildOptions, IndexBuilder
    from app.indexes.progress import PlainReporter

    notes = io.StringIO()
    engine = migration_engine(to_asyncpg_url(url), settings)
    began = time.perf_counter()
    try:
        async with engine.connect() as conn:
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            options = BuildOptions.from_settings(settings)
            await autocommit.run_sync(
                lambda sync: IndexBuilder(sync, options, PlainReporter(notes)).ensure()
            )
    finally:
        await engine.dispose()
    seconds = time.perf_counter() - began
    conn2 = await asyncpg.connect(url)
    try:
        size = await conn2.fetchval(f"SELECT pg_relation_size('{base.INDEX.name}')")
        opclass = await conn2.fetchval(
            "SELECT opcname FROM pg_index i JOIN pg_opclass o ON o.oid = i.indclass[0] "
            "WHERE i.indexrelid = $1::regclass",
            base.INDEX.name,
        )
        await conn2.execute("VACUUM ANALYZE messages")
    finally:
        await conn2.close()
    lines = [line for line in notes.getvalue().splitlines() if "building (" in line]
    return {
        "build_seconds": round(seconds, 1),
        "memory_decision": lines[0].split("): ", 1)[-1] if lines else "",
        "spilled": "spilled" in notes.getvalue(),
        "opclass": opclass,
        "index_gb": round(int(size) / GB, 2),
    }


async def sweep(
    url: str, settings: Settings, queries: np.ndarray, truth: np.ndarray, rounds: int
) -> list[dict[str, Any]]:
    """The app's first page over EFS, with the plan of each cell."""
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.db import create_engine

    cells = [scale.Cell(ef, 0) for ef in sorted({*EFS, settings.hnsw_ef_search})]
    engine = create_engine(url=to_asyncpg_url(url), settings=settings, search=True, pool_size=1)
    try:
        async with engine.connect() as conn:
            session = AsyncSession(bind=conn, expire_on_commit=False)
            results = await scale.sweep_cells(session, queries, truth, cells, settings, rounds)
            await session.close()
    finally:
        await engine.dispose()
    return [results[cell] for cell in cells]


async def run(settings: Settings, *, quick: bool) -> dict[str, Any]:
    rows, dims = QUICK if quick else FULL
    queries_n = 50 if quick else scale.QUERIES
    rounds = 1 if quick else scale.ROUNDS
    queries = Stream(dims, seed=2).draw(queries_n)  # same centres and map as the rows
    load_before = load_average()
    name = f"bench_halfvec_scale_{rows}_{uuid.uuid4().hex[:6]}"
    async with scratch_database(settings, name) as url:
        await _halfvec_schema(url, dims)
        began = time.perf_counter()
        loaded = await load(url, rows, dims, queries)
        load_seconds = time.perf_counter() - began
        load_after_load = load_average()
        built = await build(url, settings)
        load_after_build = load_average()
        cells = await sweep(url, settings, queries, loaded["truth"], rounds)
    from app.core.sizes import parse_size

    return {
        "rows": rows,
        "dims": dims,
        "queries": queries_n,
        "rounds": rounds,
        "chunk": CHUNK,
        "load_seconds": round(load_seconds, 1),
        "copy_seconds": loaded["copy_seconds"],
        "table_gb": loaded["table_gb"],
        # the exact top-10 of the halfvec values against that of the float32 vectors
        "rounding_agreement": round(
            base.recall(loaded["truth_halfvec"].tolist(), loaded["truth"]), 4
        ),
        **built,
        "ef": cells,
        "ef_search_default": settings.hnsw_ef_search,
        "memory_gb": {
            k: round(v, 2)
            for k, v in memory_budget(
                rows, dims, parse_size(settings.index_maintenance_work_mem_max)
            ).items()
        },
        "load_average": {
            "before": load_before,
            "after_load": load_after_load,
            "after_build": load_after_build,
            "after_sweep": load_average(),
        },
    }


# --------------------------------------------------------------------------- report


def targets(section: dict[str, Any]) -> list[dict[str, Any]]:
    cells = section["ef"]
    on_index = [c for c in cells if c["uses_hnsw_index"]]
    label = f"{section['rows']:,} x {section['dims']} halfvec"
    return [
        target(
            f"every cell of the app's sweep at {label} uses the HNSW index",
            "no sequential scan",
            f"{len(on_index)} of {len(cells)} cells on the index ({section['opclass']})",
            len(on_index) == len(cells),
        )
    ]


def _memory(section: dict[str, Any]) -> list[str]:
    gb = section["memory_gb"]
    return [
        "Memory arithmetic (GB), what has to fit in the machine's memory at once: the float32 "
        f"matrix of the rows would be {gb['float32_matrix_not_held']:.1f} (never held: rows are "
        f"drawn, ranked against the queries and COPYed {section['chunk']:,} at a time, "
        f"{gb['chunk_in_process']:.1f} in the process); the table with its TOAST about "
        f"{gb['table_toast']:.1f} on disk (a halfvec of {section['dims']} dims is "
        f"{2 * section['dims'] + 8:,} bytes, stored out of line), in the page cache as it is "
        f"read; the in-memory graph of the build {gb['graph_in_memory']:.1f} by pgvector's "
        f"accounting, within maintenance_work_mem's ceiling {gb['maintenance_work_mem']:.1f}; "
        f"the index about {gb['index_estimate']:.1f} on disk. Measured: table "
        f"{section['table_gb']:.2f}, index {section['index_gb']:.2f}.",
    ]


def render(section: dict[str, Any], plots: Any) -> str:  # noqa: ARG001 - tables only
    loads = section["load_average"]
    out = [
        f"## {section['rows']:,} x {section['dims']} as halfvec: the app's search",
        "",
        "The table by `alembic upgrade head`, its active embedding space set to halfvec storage "
        "and the column converted while empty (what a switch to a halfvec space leaves; the "
        "switch itself re-embeds every row through the provider, out of reach at this size), "
        f"the rows COPYed, then the index built by the product's builder as revision 0002 runs "
        f"it (`IndexBuilder.ensure`, the active space's opclass: {section['opclass']}). Same "
        "clustered distribution as the search section; "
        f"{section['queries']} held-out queries × {section['rounds']} rounds; recall@10 against "
        "numpy's exact top-10 of the float32 vectors (the exact top-10 of the rounded halfvec "
        f"values agrees with it at {section['rounding_agreement']:.4f}).",
        "",
        *_memory(section),
        "",
        f"Load (draw, rank, COPY) {section['load_seconds']:.0f} s, of which COPY "
        f"{section['copy_seconds']:.0f} s; index build {section['build_seconds']:.0f} s "
        f"({section['memory_decision']}{'; **spilled to disk**' if section['spilled'] else ''}); "
        f"index {section['index_gb']:.2f} GB. Load average (1, 5, 15 min) before "
        f"{loads['before']}, after the load {loads['after_load']}, after the build "
        f"{loads['after_build']}, after the sweep {loads['after_sweep']}.",
        "",
        "| ef_search | recall@10 | p50 ms | p95 ms | plan |",
        "|---:|---:|---:|---:|---|",
        *[scale._row(c, "ef_search") for c in section["ef"]],
        "",
    ]
    return "\n".join(out)
