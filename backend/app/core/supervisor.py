"""Run child processes in the foreground and stop all of them together."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

# The local model's OpenMP threads spin while they wait for work; in an API or worker that
# shares 2 cores with Postgres that spinning took the CPU the rest of the request needed
# (measured: about 6x the search throughput with the threads sleeping instead).
CHILD_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


@dataclass
class Child:
    name: str
    argv: Sequence[str]
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            list(self.argv),
            env={**CHILD_DEFAULTS, **os.environ, **self.env},
            preexec_fn=_stop_with_parent(os.getpid()),  # prctl only: safe before exec
        )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()


PR_SET_PDEATHSIG = 1


def _stop_with_parent(parent: int) -> Callable[[], None] | None:
    """In the child before exec: SIGTERM when the parent dies (Linux), so a supervisor killed
    with SIGKILL leaves no worker or API behind. Elsewhere nothing (stop_all still applies)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def arm() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # it died before the signal was armed
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def api_child(env: dict[str, str], host: str, port: int, *extra: str) -> Child:
    """The API under uvicorn, as a child process."""
    argv = [sys.executable, "-m", "uvicorn", "app.main:create_app_from_env", "--factory"]
    # a stopped API waits this long for requests in flight, not for ever
    argv += ["--timeout-graceful-shutdown", "10"]
    return Child("api", [*argv, "--host", host, "--port", str(port), *extra], env)


def worker_child(env: dict[str, str], *extra: str, name: str = "worker") -> Child:
    """`tasktracker worker`, as a child process."""
    return Child(name, [sys.executable, "-m", "app.cli", "worker", *extra], env)


def stop_all(children: Sequence[Child], timeout: float = 15.0) -> None:
    """SIGTERM every child, wait for them, SIGKILL the ones that do not stop in time."""
    for child in children:
        if child.process is not None and child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        if child.process is None:
            continue
        try:
            child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()


def supervise(children: Sequence[Child]) -> int:
    """Start the children; on SIGINT/SIGTERM or when one exits, stop them all. Returns exit code."""
    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for child in children:
            child.start()
        while not stopping:
            if any(child.exited() is not None for child in children):
                break
            time.sleep(0.2)
        failed = [c for c in children if c.exited() not in (None, 0)]
        return 0 if stopping or not failed else 1
    finally:
        stop_all(children)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
