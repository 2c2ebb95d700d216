"""Clustered test vectors, one recipe for the tests and the benchmarks.

In SQL (for tables of up to millions of rows, generated inside Postgres): `clusters` random
centres of `dims` components in [-0.5, 0.5), each row a centre plus uniform noise. In numpy (for
loading through COPY): Gaussian centres plus Gaussian noise, normalised to unit length.
"""

from __future__ import annotations

import numpy as np


def centers_sql(clusters: int, dims: int) -> str:
    """A SELECT of (c, v): `clusters` random centres as float arrays (seed it with setseed)."""
    return (
        "SELECT c, array_agg(random() - 0.5) AS v "
        f"FROM generate_series(0, {clusters - 1}) c, generate_series(1, {dims}) d GROUP BY c"
    )


def near_center_sql(spread: float, per_row: str) -> str:
    """A vector near the joined `centers.v`; `per_row` names a column of the row, so Postgres
    draws new noise for every row instead of computing the subquery once."""
    return (
        f"(SELECT array_agg(x + (random() - 0.5) * {spread} + 0 * {per_row}) "
        "FROM unnest(centers.v) x)::vector"
    )


def clustered_unit_vectors(rows: int, dims: int, clusters: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around `clusters` random centres (float32, rows x dims)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dims)).astype(np.float32)
    noise = 0.5 * rng.standard_normal((rows, dims)).astype(np.float32)
    vectors = centres[np.arange(rows) % clusters] + noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors
