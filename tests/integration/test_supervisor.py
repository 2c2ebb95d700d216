"""The supervisor of `tasktracker services`: its children never outlive it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import Pipeline

pytestmark = pytest.mark.slow

# What `tasktracker services` runs (supervise over a worker child), without the embedded servers.
SUPERVISOR = (
    "import sys; from app.core.supervisor import supervise, worker_child; "
    "sys.exit(supervise([worker_child({})]))"
)


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_a_worker_whose_supervisor_was_killed_stops(pipeline: Pipeline, tmp_path: Path) -> None:
    log = tmp_path / "services.log"
    with open(log, "wb") as out:
        parent = subprocess.Popen(
            [sys.executable, "-c", SUPERVISOR],
            env={**os.environ, **pipeline.env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    worker: psutil.Process | None = None
    try:
        _wait(lambda: "worker ready" in log.read_text(), 120, "the worker never became ready")
        children = psutil.Process(parent.pid).children()
        assert len(children) == 1
        worker = children[0]

        parent.send_signal(signal.SIGKILL)  # no chance to stop its children
        parent.wait()
        _wait(
            lambda: not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE,
            60,
            f"the worker outlived its supervisor: {log.read_text()[-2000:]}",
        )
        assert "worker stopped" in log.read_text()  # it stopped cleanly, on the SIGTERM
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if worker is not None and worker.is_running():
            worker.kill()
