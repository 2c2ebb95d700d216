"""Small statistics for benchmarks: percentiles, medians over repeated runs, and their spread.

A shared 2-core machine is noisy: every figure in the report is the median of repeated rounds,
shown with its spread (min-max), and systems are compared by ratios measured in the same run.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def load_average() -> list[float]:
    """The machine's load average (1, 5, 15 min), recorded beside the figures it may inflate."""
    return [round(x, 2) for x in os.getloadavg()]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; 0.0 for no values."""
    if not values:
        return 0.0
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


@dataclass(frozen=True)
class Spread:
    """The median of repeated measurements and their range."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            return cls(0.0, 0.0, 0.0, 0)
        return cls(float(statistics.median(values)), min(values), max(values), len(values))

    def as_dict(self, digits: int = 3) -> dict[str, Any]:
        return {
            "median": round(self.median, digits),
            "low": round(self.low, digits),
            "high": round(self.high, digits),
            "n": self.n,
        }

    def text(self, fmt: str = ",.1f") -> str:
        """'1,234.5 (1,200.0-1,250.3)' for a table cell; the bare median for one run."""
        if self.n <= 1:
            return format(self.median, fmt)
        return f"{format(self.median, fmt)} ({format(self.low, fmt)}-{format(self.high, fmt)})"


def latency_summary(milliseconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 and mean of one round's latencies, in milliseconds."""
    return {
        "p50_ms": round(percentile(milliseconds, 50), 3),
        "p95_ms": round(percentile(milliseconds, 95), 3),
        "p99_ms": round(percentile(milliseconds, 99), 3),
        "mean_ms": round(statistics.fmean(milliseconds), 3) if milliseconds else 0.0,
        "count": len(milliseconds),
    }


def target(name: str, wanted: str, measured: str, met: bool) -> dict[str, Any]:
    """One row of the report's targets table."""
    return {"name": name, "target": wanted, "measured": measured, "met": met}
