"""The HNSW graph estimate and the build session's maintenance_work_mem decision."""

from __future__ import annotations

import pytest

from app.core.errors import ConfigurationError
from app.core.sizes import format_size, parse_size
from app.indexes.memory import bytes_per_dim, graph_bytes, plan_memory
from app.indexes.progress import PlainReporter, Progress


def test_sizes_read_and_written_in_postgres_units() -> None:
    assert parse_size("1GB") == 1024**3
    assert parse_size("512MB") == 512 * 1024**2
    assert parse_size("65536") == 64 * 1024**2  # a bare number is kB, as in Postgres
    assert format_size(2 * 1024**3) == "2GB"
    assert format_size(1536 * 1024**2) == "1536MB"
    with pytest.raises(ConfigurationError, match="e.g. 512MB"):
        parse_size("a lot")


def test_estimate_matches_pgvectors_spill_point() -> None:
    """pgvector 0.8.6 spilled a 384-dim graph out of 64MB after 29,798 tuples (measured)."""
    per_row = graph_bytes(1_000_000, 384, 16) / 1_000_000
    assert abs(29_798 * per_row - 64 * 1024**2) / (64 * 1024**2) < 0.02


def test_graph_that_fits_keeps_the_configured_value() -> None:
    plan = plan_memory(100_000, 384, 16, "1GB", "4GB")
    assert plan.fits and not plan.raised and plan.session == 1024**3
    assert "fits in maintenance_work_mem 1GB" in plan.describe()


def test_graph_over_the_setting_raises_it_up_to_the_ceiling() -> None:
    plan = plan_memory(1_000_000, 384, 16, "1GB", "4GB")  # ~2.1 GB
    assert plan.fits and plan.raised and 1024**3 < plan.session <= 4 * 1024**3
    assert "raised from 1GB to" in plan.describe()


def test_graph_over_the_ceiling_warns_with_the_value_to_set() -> None:
    plan = plan_memory(2_000_000, 1536, 16, "1GB", "4GB")  # ~13 GB
    assert not plan.fits and plan.session == 4 * 1024**3
    described = plan.describe()
    assert "about 10x slower" in described
    assert f"INDEX_MAINTENANCE_WORK_MEM_MAX={format_size(plan.needed)}" in described
    assert plan.needed >= plan.graph


def test_a_halfvec_graph_is_planned_at_two_bytes_a_dimension() -> None:
    """1M x 1536: as vector ~6.9 GB, over the 4GB ceiling; as halfvec ~3.8 GB, within it."""
    vector = plan_memory(1_000_000, 1536, 16, "1GB", "4GB", bytes_per_dim("vector_cosine_ops"))
    half = plan_memory(1_000_000, 1536, 16, "1GB", "4GB", bytes_per_dim("halfvec_cosine_ops"))
    assert not vector.fits and "spill" in vector.describe()
    assert half.fits and half.raised and "raised from 1GB" in half.describe()
    assert graph_bytes(1_000_000, 1536, 16, 4) - half.graph == 2 * 1536 * 1_000_000


def test_plain_progress_writes_a_line_per_phase_and_per_tenth(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import sys

    reporter = PlainReporter(sys.stdout)
    for done in (0, 5, 99, 100, 150, 990, 1000):
        reporter.progress(
            "i", Progress("building index: loading tuples", 0, 0, done, 1000, 0, 0, 1.0)
        )
    reporter.progress("i", Progress("index validation: scanning index", 0, 0, 1, 10, 0, 0, 2.0))
    lines = capsys.readouterr().out.splitlines()
    percents = [line.split("tuples ")[-1].split("%")[0] for line in lines[:4]]
    assert percents == ["0", "10", "99", "100"]  # 0.5%, 9.9% and 15% add no line
    assert len(lines) == 5 and "index validation" in lines[4]
