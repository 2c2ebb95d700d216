"""The benchmark report is written from the raw figures alone, and its targets are judged right."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import pipeline_suite, suite

MACHINE = {
    "cores": 2,
    "cpu": "test cpu",
    "memory_gib": 23.5,
    "postgres": "18.6",
    "pgvector": "0.8.6",
    "python": "3.11.7",
    "platform": "linux",
    "commit": "abc1234",
}


def spread(median: float) -> dict[str, Any]:
    return {"median": median, "low": median * 0.9, "high": median * 1.1, "n": 3}


def index_entry(writes: int) -> dict[str, Any]:
    build = {"rows": 1000, "dims": 8, "write_p50_ms": 1.0, "write_max_ms": 2.0}
    return {
        "measured_at": "2026-11-25 18:00 UTC",
        "seconds": 12.0,
        "quick": True,
        "machine": MACHINE,
        "figures": {
            "config": {"quick": True, "rows": 1000, "dims": 8},
            "builds": [
                {
                    **build,
                    "concurrently": True,
                    "build_seconds": 3.0,
                    "writes_during_build": writes,
                },
                {**build, "concurrently": False, "build_seconds": 2.0, "writes_during_build": 0},
            ],
        },
    }


def test_report_states_machine_versions_date_and_targets(tmp_path: Path) -> None:
    report = suite.write_report({"sections": {"index": index_entry(writes=40)}}, tmp_path)

    text = report.read_text()
    assert "2 cores (test cpu), 23.5 GiB; PostgreSQL 18.6, pgvector 0.8.6, Python 3.11.7" in text
    assert "2026-11-25 18:00 UTC" in text
    assert "| CREATE INDEX CONCURRENTLY | 3.0 | 40 |" in text
    assert "40 writes during 3 s | yes |" in text


def test_a_blocked_writer_fails_the_index_target(tmp_path: Path) -> None:
    text = suite.write_report({"sections": {"index": index_entry(writes=0)}}, tmp_path).read_text()

    assert "0 writes during 3 s | **no** |" in text


def test_analysis_notes_are_appended(tmp_path: Path) -> None:
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "analysis.md").write_text("## Analysis\n\nWhy the target is missed.\n")

    text = suite.write_report({"sections": {"index": index_entry(40)}}, tmp_path).read_text()

    assert text.rstrip().endswith("Why the target is missed.")


def pipeline_figures(ours: float, pgai: float, raw: float, ratio: float) -> dict[str, Any]:
    rates = {name: spread(100.0) for name in pipeline_suite.ZERO_SYSTEMS}
    rates.update(ours_1=spread(ours), pgai_best=spread(pgai), raw_write=spread(raw))
    return {
        "zero_latency": [{"rows": 20_000, "rows_per_second": rates}],
        "local": {
            "ratio": spread(ratio),
            "pipeline_rows_per_second": spread(70.0),
            "model_texts_per_second": spread(80.0),
        },
    }


def test_pipeline_targets_compare_medians_measured_side_by_side() -> None:
    met = pipeline_suite.targets(pipeline_figures(ours=9000, pgai=1200, raw=12000, ratio=0.85))
    missed = pipeline_suite.targets(pipeline_figures(ours=5000, pgai=1200, raw=9000, ratio=0.7))

    assert [row["met"] for row in met] == [True, True, True]
    assert [row["met"] for row in missed] == [False, False, False]
    assert missed[1]["measured"].startswith("4.2x")
    assert "56% of the raw write limit, 9,000" in missed[0]["measured"]
