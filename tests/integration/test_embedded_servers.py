"""The embedded Postgres and NATS shared by processes: nothing left running, whatever the exit.

Each test has its own data folder, so the servers here are its own (never the session's).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from app.core.embedded import free_port
from testkit.stubs.openai_stub import OpenAIStub

pytestmark = pytest.mark.slow

JOIN = """
import sys
from app.core import endpoints
endpoints.ensure_database_url()
endpoints.ensure_nats_url()
print("joined", flush=True)
sys.stdin.readline()
endpoints.release()
"""


def embedded_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL")}
    return {**env, "DATA_DIR": str(data_dir), "LOG_LEVEL": "WARNING", **extra}


def _wait(condition: Callable[[], object], what: Callable[[], str], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what()
        time.sleep(0.1)


def server_pids(data_dir: Path) -> dict[str, int]:
    """The pids of the embedded servers over `data_dir`, from their own files."""
    pids = {}
    postmaster = data_dir / "postgres" / "postmaster.pid"
    if postmaster.exists():
        pids["postgres"] = int(postmaster.read_text().split()[0])
    state = data_dir / "nats" / "server.json"
    if state.exists():
        pids["nats"] = int(json.loads(state.read_text())["pid"])
    return pids


def leftovers(data_dir: Path, known: dict[str, int]) -> list[str]:
    """Processes still running that belong to `data_dir` (known server pids, or its path)."""
    found = [f"{name} {pid}" for name, pid in known.items() if _running(pid)]
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(process.info["cmdline"] or [])
        except psutil.Error:
            continue
        if str(data_dir) in cmdline and process.pid != os.getpid():
            found.append(f"{process.pid}: {cmdline[:200]}")
    return found


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Joiner:
    """A process that joins the embedded servers and leaves when told (or is killed)."""

    def __init__(self, env: dict[str, str]):
        self.process = subprocess.Popen(
            [sys.executable, "-c", JOIN],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.strip() == "joined", line + self.process.stdout.read()

    def leave(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("\n")
        self.process.stdin.close()
        assert self.process.wait(120) == 0

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "data"
    yield folder
    for name, pid in server_pids(folder).items():  # a failed test leaves nothing either
        if _running(pid):
            os.kill(pid, signal.SIGKILL)
            del name


def test_a_killed_joiner_does_not_keep_the_servers_running(data_dir: Path) -> None:
    env = embedded_env(data_dir)
    first = Joiner(env)
    second = Joiner(env)
    pids = server_pids(data_dir)
    assert set(pids) == {"postgres", "nats"} and all(map(_running, pids.values()))

    first.kill()  # SIGKILL: it never leaves
    second.leave()

    _wait(lambda: not leftovers(data_dir, pids), lambda: f"left: {leftovers(data_dir, pids)}")


def test_a_dead_nats_server_comes_back_on_its_port(data_dir: Path) -> None:
    env = embedded_env(data_dir)
    first = Joiner(env)
    state = json.loads((data_dir / "nats" / "server.json").read_text())
    os.kill(state["pid"], signal.SIGKILL)
    _wait(lambda: not _running(state["pid"]), lambda: "nats-server did not die")

    second = Joiner(env)  # the next process that needs it starts it again
    again = json.loads((data_dir / "nats" / "server.json").read_text())
    assert again["pid"] != state["pid"] and _running(again["pid"])
    assert again["port"] == state["port"]  # where running clients reconnect
    pids = server_pids(data_dir)
    second.leave()
    first.leave()
    _wait(lambda: not leftovers(data_dir, pids), lambda: f"left: {leftovers(data_dir, pids)}")


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/v1/health/live", timeout=2).is_success
    except httpx.HTTPError:
        return False


def test_services_stopped_by_sigint_to_its_group_leave_nothing_behind(data_dir: Path) -> None:
    with OpenAIStub(dims=384) as stub:
        env = embedded_env(
            data_dir,
            EMBEDDING_PROVIDER="openai",
            EMBEDDING_MODEL="text-embedding-3-small",
            EMBEDDING_BASE_URL=stub.base_url,
            EMBEDDING_API_KEY="k",
        )
        # Two Ctrl-Cs first (as `uv run` forwards one more), then one: the second run also
        # checks that a start after the harder stop finds nothing stale in the data folder.
        for run in range(2):
            port = free_port()
            services = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "services", "--port", str(port)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, as in a terminal
            )
            try:
                _wait(lambda: _ready(port), lambda: f"run {run}: no API", timeout=180)  # noqa: B023
                pids = server_pids(data_dir)
                assert set(pids) == {"postgres", "nats"}
                created = _cli(env, "token", "create", "--scope", "admin", "--quiet")
                assert created.returncode == 0, created.stderr
                assert _cli(env, "status").returncode == 0

                os.killpg(services.pid, signal.SIGINT)
                if run == 0:  # a second Ctrl-C, or the one a wrapper such as `uv run` forwards
                    time.sleep(0.5)
                    os.killpg(services.pid, signal.SIGINT)
                services.wait(120)
            finally:
                if services.poll() is None:
                    os.killpg(services.pid, signal.SIGKILL)
                    services.wait()
            _wait(
                lambda: not leftovers(data_dir, pids),  # noqa: B023
                lambda: f"run {run}: left: {leftovers(data_dir, pids)}",  # noqa: B023
                timeout=60,
            )
            assert not (data_dir / "nats" / "server.json").exists()
