"""Will the HNSW graph fit in maintenance_work_mem? The estimate, and what the build session sets.

pgvector builds the graph in memory until it reaches maintenance_work_mem, then says "hnsw graph
no longer fits into maintenance_work_mem" and inserts the remaining rows one by one into the
on-disk graph: about ten times slower (measured here: 506 s against 52 s at 100k x 1536). Its own
accounting (hnswbuild.c, HnswElementMemory) charges each element its struct, one neighbour array
per level, `m x (level + 2)` candidates and the vector; the mean level is 1 / (m - 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from app.core.sizes import format_size, human, parse_size

# hnswbuild.c: sizeof(HnswElementData) + neighbour array header + heap tid + allocator slack,
# and the per-candidate size (a relative pointer, a float distance and a flag, aligned).
# Calibrated on pgvector 0.8.6: with 64MB the graph of 384-dim rows spilled after 29,798
# tuples, 2,252 bytes each, which this formula gives.
ELEMENT_BYTES = 162
NEIGHBOR_ARRAY_BYTES = 16
CANDIDATE_BYTES = 16
VECTOR_HEADER_BYTES = 8
# Headroom over the estimate when the session's value is raised: allocator slack, a row count
# that grows while the build runs.
HEADROOM = 1.15
ROUND_TO = 64 * 1024**2


def bytes_per_dim(opclass: str) -> int:
    """What one dimension of an index's vectors takes: halfvec_cosine_ops 2, vector's 4."""
    return 2 if opclass.startswith("halfvec") else 4


def graph_bytes(rows: int, dims: int, m: int, bytes_per_dim: int = 4) -> int:
    """The in-memory HNSW graph pgvector builds for `rows` vectors of `dims` dimensions."""
    mean_level = 1.0 / (m - 1) if m > 1 else 0.0
    per_row = (
        ELEMENT_BYTES
        + NEIGHBOR_ARRAY_BYTES * (mean_level + 1)
        + CANDIDATE_BYTES * m * (mean_level + 2)
        + VECTOR_HEADER_BYTES
        + bytes_per_dim * dims
    )
    return math.ceil(rows * per_row)


@dataclass(frozen=True)
class MemoryPlan:
    """What the build session's maintenance_work_mem will be, and why."""

    rows: int
    dims: int
    graph: int  # estimated bytes
    configured: int
    ceiling: int
    session: int  # the value the session sets

    @property
    def fits(self) -> bool:
        return self.graph <= self.session

    @property
    def raised(self) -> bool:
        return self.session > self.configured

    @property
    def needed(self) -> int:
        """The value that would hold the whole graph, rounded up."""
        return _round_up(int(self.graph * HEADROOM))

    def describe(self) -> str:
        """One line: the estimate and the decision."""
        head = f"{self.rows:,} rows x {self.dims} dims, graph ~{human(self.graph)}"
        if self.rows == 0:
            return f"no rows yet ({self.dims} dims)"
        if not self.fits:
            return (
                f"{head}: does not fit in maintenance_work_mem {format_size(self.session)} "
                f"(the ceiling INDEX_MAINTENANCE_WORK_MEM_MAX); the build will spill to disk and "
                f"run about 10x slower. Fix: set INDEX_MAINTENANCE_WORK_MEM_MAX={format_size(self.needed)} "
                "if the server has that much free memory"
            )
        if self.raised:
            return (
                f"{head}: maintenance_work_mem raised from {format_size(self.configured)} to "
                f"{format_size(self.session)} for this build (ceiling {format_size(self.ceiling)})"
            )
        return f"{head}: fits in maintenance_work_mem {format_size(self.session)}"


def plan_memory(
    rows: int, dims: int, m: int, configured: str, ceiling: str, bytes_per_dim: int = 4
) -> MemoryPlan:
    """Keep the configured value if the graph fits; else raise it, but never past the ceiling.

    `bytes_per_dim` is the column's: 4 for vector, 2 for halfvec (half the graph).
    """
    graph = graph_bytes(rows, dims, m, bytes_per_dim)
    configured_bytes = parse_size(configured)
    ceiling_bytes = max(parse_size(ceiling), configured_bytes)
    session = configured_bytes
    if graph > configured_bytes:
        session = min(_round_up(int(graph * HEADROOM)), ceiling_bytes)
    return MemoryPlan(rows, dims, graph, configured_bytes, ceiling_bytes, session)


def _round_up(size: int) -> int:
    return max(ROUND_TO, math.ceil(size / ROUND_TO) * ROUND_TO)
