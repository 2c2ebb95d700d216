"""backend/scripts/backfill_embeddings.py, run as a user runs it, against real services."""

from __future__ import annotations

import json
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
    assert (await pipeline.counts("atoms")) == (50, 50)
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
    """Peak resident memory of one backfill run in bytes: the kernel's own high-water mark
    (ru_maxrss from wait4), so no peak falls between two samples however loaded the machine."""
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        env={**os.environ, **pipeline.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"backfill {args} still running after 300 s")
        time.sleep(0.1)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 0
    return usage.ru_maxrss * 1024  # kilobytes on Linux


async def _park(pipeline: Pipeline, count: int) -> None:
    """Park `count` rows the way the worker does after max_attempts failures."""
    async with pipeline.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE messages SET embedding_attempts = 3, embedding_error = 'stub said 400' "
                "WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT :n)"
            ),
            {"n": count},
        )


def _status(pipeline: Pipeline) -> dict[str, dict[str, int]]:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "status", "--json"],
        env={**os.environ, **pipeline.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return {row["entity"]: row for row in json.loads(result.stdout)["coverage"]}


async def test_parked_rows_show_in_status_and_only_retry_failed_embeds_them(
    pipeline: Pipeline,
) -> None:
    """A plain backfill leaves parked rows parked; --retry-failed gives them a new chance."""
    await insert_messages(pipeline.engine, 10)
    await _park(pipeline, 3)
    status = _status(pipeline)["messages"]
    assert (status["total"], status["pending"], status["parked"]) == (10, 7, 3)

    plain = backfill(pipeline, "--inline", "--entity", "messages")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "messages 7" in plain.stdout
    assert (await pipeline.counts("messages")) == (10, 7)
    assert _status(pipeline)["messages"]["parked"] == 3

    retried = backfill(pipeline, "--inline", "--retry-failed", "--entity", "messages")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert "messages 3" in retried.stdout
    assert (await pipeline.counts("messages")) == (10, 10)
    status = _status(pipeline)["messages"]
    assert (status["embedded"], status["pending"], status["parked"]) == (10, 0, 0)


async def _provider(pipeline: Pipeline, name: str, model: str, *, active: bool = True) -> str:
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.core.enums import ProviderType
    from app.embedding import provider_service

    async with AsyncSession(pipeline.engine, expire_on_commit=False) as session:
        row = await provider_service.create_provider(
            session,
            name=name,
            type=ProviderType.openai,
            embedding_model=model,
            embedding_dimensions=384,
            base_url=pipeline.stub.base_url,
            api_key="test-key",
        )
        row.is_active = active
        await session.commit()
        return str(row.id)


async def test_backfill_provider_embeds_with_that_provider_and_refuses_an_inactive_one(
    pipeline: Pipeline,
) -> None:
    """--provider <id> embeds with the stored provider; an inactive one is one clear line."""
    await insert_messages(pipeline.engine, 12)
    # The keys were encrypted with this process's key: the script must read the same key file.
    same_key = {"DATA_DIR": os.environ["DATA_DIR"]}
    large = await _provider(pipeline, "large", "text-embedding-3-large")
    off = await _provider(pipeline, "off", "text-embedding-3-small", active=False)

    refused = backfill(pipeline, "--inline", "--provider", off, env=same_key)
    assert refused.returncode == 1
    assert "provider 'off' is not active" in refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert (await pipeline.counts("messages")) == (12, 0)

    run = backfill(pipeline, "--inline", "--provider", large, env=same_key)
    assert run.returncode == 0, run.stdout + run.stderr
    async with pipeline.engine.connect() as conn:
        models = set((await conn.execute(text("SELECT embedding_model FROM messages"))).scalars())
    assert models == {"text-embedding-3-large"}
