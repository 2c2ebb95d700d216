"""backend/scripts/backfill_embeddings.py, run as a user runs it, against real services."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.integration.conftest import Pipeline, insert_atoms, insert_messages

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[2] / "backend" / "scripts" / "backfill_embeddings.py"


def backfill(
    pipeline: Pipeline, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env={**os.environ, **pipeline.env, **(env or {}), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=300,
    )


async def test_dry_run_inline_and_second_run(pipeline: Pipeline) -> None:
    await insert_messages(pipeline.engine, 237)
    await insert_atoms(pipeline.engine, 125)

    dry = backfill(pipeline, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "messages 237, atoms 125" in dry.stdout

    run = backfill(pipeline, "--inline")
    assert run.returncode == 0, run.stdout + run.stderr
    assert (await pipeline.counts("messages")) == (237, 237)
    assert (await pipeline.counts("atoms")) == (125, 125)
    assert "100.0" in run.stdout  # the coverage table

    calls = pipeline.stub.stats()["inputs"]
    again = backfill(pipeline, "--inline")
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert pipeline.stub.stats()["inputs"] == calls, "the second run embedded nothing"


async def test_enqueue_with_a_worker_and_wait(pipeline: Pipeline) -> None:
    await insert_messages(pipeline.engine, 300)
    await insert_atoms(pipeline.engine, 50)
    pipeline.worker("--no-sweeper")
    run = backfill(pipeline, "--wait", "--page-size", "100")
    assert run.returncode == 0, run.stdout + run.stderr
    assert (await pipeline.counts("messages")) == (300, 300)
    assert "rows/s" in run.stdout


async def test_stale_after_a_model_change_reembeds_every_row_once(pipeline: Pipeline) -> None:
    await insert_messages(pipeline.engine, 40)
    assert backfill(pipeline, "--inline").returncode == 0
    pipeline.stub.reset()
    other = {"EMBEDDING_MODEL": "text-embedding-3-large"}

    plain = backfill(pipeline, "--dry-run", env=other)
    assert "messages 0" in plain.stdout, "without --stale, a new model alone is not work"
    stale = backfill(pipeline, "--inline", "--stale", "--entity", "messages", env=other)
    assert stale.returncode == 0, stale.stdout + stale.stderr
    counts = pipeline.stub.stats()["text_counts"]
    assert len(counts) == 40 and set(counts.values()) == {1}
    async with pipeline.engine.connect() as conn:
        models = set((await conn.execute(text("SELECT embedding_model FROM messages"))).scalars())
    assert models == {"text-embedding-3-large"}


async def test_interrupted_backfill_resumes_and_memory_stays_flat(pipeline: Pipeline) -> None:
    await insert_messages(pipeline.engine, 100_000)
    # No worker: this measures the backfill itself (queueing), which is what must stay flat.
    first = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--page-size", "500"],
        env={**os.environ, **pipeline.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        async with pipeline.engine.connect() as conn:
            queued = (
                await conn.execute(
                    text("SELECT count(*) FROM messages WHERE embedding_queued_at IS NOT NULL")
                )
            ).scalar_one()
        if queued >= 20_000:
            break
        time.sleep(0.1)
    first.send_signal(signal.SIGINT)
    first.wait(30)
    assert 0 < queued < 100_000, "interrupted half-way"

    # The rows are the queue: a rerun finishes the job from what is still pending.
    second = backfill(pipeline, "--page-size", "500")
    assert second.returncode == 0, second.stdout + second.stderr
    async with pipeline.engine.connect() as conn:
        left = (
            await conn.execute(
                text("SELECT count(*) FROM messages WHERE embedding_queued_at IS NULL")
            )
        ).scalar_one()
    assert left == 0
    assert "rows/s" in second.stdout

    # Flat memory: the peak RSS of a 100k-row run is close to that of a 1k-row run.
    small = _peak_rss(pipeline, ["--page-size", "500", "--limit", "1000"])
    large = _peak_rss(pipeline, ["--page-size", "500"])
    assert large < small * 1.25, (small, large)


def _peak_rss(pipeline: Pipeline, args: list[str]) -> int:
    """Peak resident memory of one backfill run, sampled every 20 ms."""
    import psutil

    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        env={**os.environ, **pipeline.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    watched, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    assert process.returncode == 0
    return peak
