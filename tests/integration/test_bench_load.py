"""The load and fault benchmarks on tiny sizes: real API and worker processes, stubs, real HTTP."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from bench import faults, load
from bench.api import load_messages

LOAD = load.LoadPlan(
    seconds=6.0, warmup=1.0, clients=8, rows=200, clusters=5, memory_window=2.0, drain_timeout=40.0
)
FAULT = faults.FaultPlan(
    lead=3.0, outage=6.0, tail=3.0, clients=4, rows=100, clusters=5, drain_timeout=45.0
)


def test_the_mix_is_about_80_15_5() -> None:
    rng = random.Random(1)
    counts = Counter(load.pick_route(rng) for _ in range(10_000))
    assert abs(counts["search"] / 10_000 - 0.80) < 0.02
    assert abs(counts["ingest"] / 10_000 - 0.15) < 0.02
    assert abs(counts["status"] / 10_000 - 0.05) < 0.01
    assert Counter(load.dedicated_routes(32)) == {"search": 25, "ingest": 5, "status": 2}
    assert set(load.dedicated_routes(3)) == set(load.ROUTES)


async def test_load_counts_every_route_and_ends_fully_embedded_once(
    make_db: Callable[[], str], nats_url: str, tmp_path: Path
) -> None:
    url = make_db()
    await load_messages(url, LOAD.rows, load.DIMS, LOAD.clusters)

    figures = await load.measure(url, nats_url, LOAD)

    routes = figures["routes"]
    for route in load.ROUTES:
        assert routes[route]["requests"] > 0, route
        assert routes[route]["server_errors"] == 0, routes[route]["error_kinds"]
    assert routes["all"]["requests"] == sum(routes[r]["requests"] for r in load.ROUTES)
    search = routes["search"]
    assert 0 < search["p50_ms"] <= search["p95_ms"] <= search["p99_ms"]
    assert search["requests"] > routes["ingest"]["requests"] > 0
    ok_per_second = sum(s[r] for s in figures["throughput"] for r in load.ROUTES)
    assert ok_per_second >= sum(routes[r]["count"] for r in load.ROUTES)
    check = figures["check"]
    assert check["rows"] >= LOAD.rows + 1 + routes["ingest"]["count"]  # + the warm-up one
    assert check["coverage_pct"] == 100.0 and check["exactly_once"], check
    assert check["writes"] == check["rows"] - LOAD.rows
    assert figures["drain_seconds"] is not None
    for name in ("api", "worker"):
        assert figures["memory"][name]["first_mb"] > 10, figures["memory"]
        assert figures["memory"][name]["samples"] >= LOAD.seconds - 2

    section = {"config": {**load.stack_config(LOAD.stack), **vars(LOAD)}, **figures}
    text = load.render(section, tmp_path)
    assert "| search |" in text and (tmp_path / "load.png").exists()
    rows = load.targets(section)
    assert rows[0]["met"] and rows[-1]["met"]


async def test_provider_outage_backs_off_and_heals_by_itself(
    make_db: Callable[[], str], nats_url: str, tmp_path: Path
) -> None:
    url = make_db()
    await load_messages(url, FAULT.rows, load.DIMS, FAULT.clusters)

    result = await faults.run_scenario(faults.provider_outage(), url, nats_url, FAULT)

    worker_calls = result["provider_calls"]["worker"]
    assert worker_calls["during_per_s"] is not None
    # Backing off: a handful of calls a second at most, not a tight loop.
    assert worker_calls["during_peak_per_s"] < 20, worker_calls
    during = result["phases"]["during"]["routes"]
    assert during["ingest"]["requests"] > 0  # rows kept arriving while search stalled
    marks = result["marks"]
    waiting = [
        p["pending"] or 0 for p in result["timeline"] if marks["down"] <= p["t"] <= marks["back"]
    ]
    assert max(waiting) > 0  # and waited as pending
    assert "500" not in during["all"]["error_kinds"]
    check = result["check"]
    assert check["coverage_pct"] == 100.0 and check["exactly_once"], check
    assert check["rows"] > FAULT.rows + 1
    assert result["recovery"]["backlog_cleared_s"] is not None
    assert result["recovery"]["first_embedding_s"] is not None

    section = {"config": {**load.stack_config(FAULT.stack), **vars(FAULT)}, "scenarios": [result]}
    assert "### Provider down" in faults.render(section, tmp_path)
    assert (tmp_path / "fault_provider_outage.png").exists()
    assert faults.targets(section)[0]["met"]
