"""The embedded PostgreSQL server's shared_buffers: sized from the machine, not left at 128MB.

PostgreSQL's built-in 128MB is made for a server that must start anywhere. A vector search walks
the HNSW graph's pages: once the index outgrows shared_buffers, every page a search visits is
copied in from the OS cache, evicting another. Measured at 1,000,000 x 384 (index 1.95 GB), the
bare query's p50 at ef_search 64 was 5.3 ms with 128MB and 2.0 ms with 6GB, same recall.

`auto` is PostgreSQL's documented starting point for a server with 1GB of memory or more, a
quarter of it (of the container's limit when a cgroup sets one), between 128MB and 8GB: the
embedded server shares its machine with the API, the workers and the local model, and a team
that outgrows 8GB runs its own server (DATABASE_URL). The memory is not taken at start: the
server touches a buffer only when it reads a page into it.
"""

from __future__ import annotations

import os
from pathlib import Path

from app.core.sizes import format_size, parse_size

AUTO = "auto"
FLOOR = 128 * 1024**2
CEILING = 8 * 1024**3
SHARE = 4  # a quarter
MIB = 1024**2
CGROUP_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)


def physical_memory() -> int:
    """The machine's memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cgroup_limit(paths: tuple[Path, ...] = CGROUP_LIMITS) -> int | None:
    """The memory limit of this process's container, if one is set."""
    for path in paths:
        try:
            value = path.read_text().strip()
        except OSError:
            continue
        if value.isdigit():
            return int(value)
    return None


def available_memory() -> int:
    """What the embedded server may plan with: the machine's memory, or the container's limit."""
    limit = cgroup_limit()
    memory = physical_memory()
    return min(memory, limit) if limit else memory


def is_auto(setting: str) -> bool:
    """Is EMBEDDED_POSTGRES_SHARED_BUFFERS `auto` (any case, spaces around)?"""
    return setting.strip().lower() == AUTO


def shared_buffers(setting: str, memory: int | None = None) -> str:
    """The shared_buffers value for EMBEDDED_POSTGRES_SHARED_BUFFERS (`auto` or a size)."""
    if not is_auto(setting):
        return format_size(parse_size(setting))
    memory = available_memory() if memory is None else memory
    quarter = memory // SHARE // MIB * MIB
    return format_size(min(max(quarter, FLOOR), CEILING))
