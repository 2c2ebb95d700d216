"""Build the HNSW indexes, online: the add_vector_indexes revision, the repair after every upgrade,
and `tasktracker index rebuild` all run this, with the SQL of app.indexes.catalog.

The connection given must be in autocommit (CREATE INDEX CONCURRENTLY runs outside a
transaction) and must have no client-side statement timeout: a build on a real table takes
minutes to hours. The session keeps `statement_timeout = 0` and its own `lock_timeout`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from app.core.config import Settings
from app.core.errors import AppError
from app.core.sizes import format_size, human
from app.core.urls import to_libpq_url
from app.indexes.catalog import (
    RESET_SESSION_SQL,
    VectorIndex,
    active_vector_indexes,
    build_note,
    graph_of,
)
from app.indexes.memory import MemoryPlan, bytes_per_dim, plan_memory
from app.indexes.progress import BuildReporter, ProgressWatcher, run_in_thread

SPILL_NOTICE = "hnsw graph no longer fits into maintenance_work_mem"
REPAIR_HINT = "Fix: run `alembic upgrade head` again, or `tasktracker index rebuild`"


class IndexBuildError(AppError):
    """A build failed or was stopped; the message says the index's state and the repair."""

    status_code = 503


class IndexBuildInterrupted(IndexBuildError):
    """Ctrl-C or SIGTERM stopped a build (the command exits 130)."""


def app_error_in(exc: BaseException) -> AppError | None:
    """The AppError behind `exc`: alembic's own cleanup after a failed build (committing on
    the dead connection) raises anew, with the build's error as its context."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, AppError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


@dataclass
class BuildOptions:
    """The session settings of a build, from Settings."""

    maintenance_work_mem: str
    maintenance_work_mem_max: str
    parallel_workers: int
    lock_timeout: str
    progress_interval: float = 1.0

    @classmethod
    def from_settings(cls, settings: Settings) -> BuildOptions:
        return cls(
            settings.index_maintenance_work_mem,
            settings.index_maintenance_work_mem_max,
            settings.index_parallel_workers,
            settings.index_lock_timeout,
            settings.index_progress_interval_seconds,
        )


@dataclass
class _Build:
    """What one build saw: its memory plan and pgvector's notices."""

    plan: MemoryPlan
    notices: list[str] = field(default_factory=list)

    @property
    def spilled(self) -> bool:
        return any(SPILL_NOTICE in notice for notice in self.notices)


class IndexBuilder:
    """Drops what is wrong, builds what is missing, and says so while it works."""

    def __init__(self, connection: Connection, options: BuildOptions, reporter: BuildReporter):
        self.connection = connection
        self.options = options
        self.reporter = reporter
        url = connection.engine.url.render_as_string(hide_password=False)
        self.dsn = to_libpq_url(url)

    # -- the statements --------------------------------------------------------------------

    def execute(self, statement: str) -> list[Any]:
        result = self.connection.execute(text(statement))
        return [row[0] for row in result] if result.returns_rows else []

    def scalar(self, statement: str) -> Any:
        rows = self.execute(statement)
        return rows[0] if rows else None

    def _session(self) -> None:
        self.execute(f"SET max_parallel_maintenance_workers = {int(self.options.parallel_workers)}")
        self.execute(f"SET lock_timeout = '{self.options.lock_timeout}'")
        self.execute("SET statement_timeout = 0")
        if int(self.scalar("SELECT current_setting('server_version_num')::int")) >= 140000:
            # a client that dies (SIGKILL, lost host) stops its build within seconds
            self.execute("SET client_connection_check_interval = '2s'")

    def _reset(self) -> None:
        if self.connection.invalidated:  # the build failed with its backend: nothing to reset
            return
        for statement in RESET_SESSION_SQL:
            self.execute(statement)

    # -- what the revision and the repair run ----------------------------------------------

    def ensure(self) -> None:
        """Every index valid and as defined: wrong ones dropped CONCURRENTLY, missing ones built."""
        self._session()
        try:
            indexes = active_vector_indexes(self.execute)
            for index in indexes:
                self._drop_if_wrong(index)
            for index in indexes:
                if not self._exists(index):
                    self._build(index, index.create_statement(concurrently=True), "CONCURRENTLY")
        finally:
            self._reset()

    def build_one(self, index: VectorIndex) -> None:
        """`index` valid and as defined: a wrong or INVALID one dropped, a missing one built."""
        self._session()
        try:
            self._drop_if_wrong(index)
            if not self._exists(index):
                self._build(index, index.create_statement(concurrently=True), "CONCURRENTLY")
        finally:
            self._reset()

    def rebuild(self, index: VectorIndex, *, concurrently: bool) -> None:
        """Build `index` again: REINDEX CONCURRENTLY when it is right (but for its parameters,
        which are set first), else drop and build."""
        self._session()
        try:
            self._drop_leftovers(index)
            if concurrently and self._retunable(index):
                self._retune(index)
                return
            if concurrently and self._healthy(index):
                self.reporter.note(index.name, "valid: REINDEX CONCURRENTLY (searches keep it)")
                self._build(
                    index, index.reindex_statement(concurrently=True), "REINDEX CONCURRENTLY"
                )
                return
            self._drop(index, concurrently=concurrently, why="dropping it to build it again")
            how = "CONCURRENTLY" if concurrently else "blocking"
            self._build(index, index.create_statement(concurrently=concurrently), how)
        finally:
            self._reset()

    # -- the steps --------------------------------------------------------------------------

    def _state(self, index: VectorIndex) -> tuple[bool, bool, bool] | None:
        """(valid, ready, definition right), or None when there is no such index."""
        row = self.connection.execute(text(index.state_sql)).first()
        return None if row is None else (bool(row[0]), bool(row[1]), bool(row[2]))

    def _exists(self, index: VectorIndex) -> bool:
        return self._state(index) is not None

    def _healthy(self, index: VectorIndex) -> bool:
        state = self._state(index)
        return state is not None and all(state)

    def _retunable(self, index: VectorIndex) -> bool:
        """Valid and right but for m / ef_construction (or a graph built with others)."""
        return bool(self.scalar(index.retune_sql))

    def _drop_if_wrong(self, index: VectorIndex) -> None:
        self._drop_leftovers(index)
        state = self._state(index)
        if state is None or all(state):
            return
        if self._retunable(index):
            self._retune(index)
            return
        valid, ready, _ = state
        why = (
            "is INVALID (a build was interrupted or failed)"
            if not (valid and ready)
            else f"has another definition than hnsw ({index.column} {index.opclass})"
        )
        self._drop(index, concurrently=True, why=f"{why}: dropping it CONCURRENTLY to build again")

    def _retune(self, index: VectorIndex) -> None:
        """New m / ef_construction, online: the catalog's first, then REINDEX CONCURRENTLY builds
        the new graph beside the old one, which searches use until the swap. Should the REINDEX
        stop, the build note still names the old graph and the next repair runs it again."""
        self.reporter.note(
            index.name,
            f"was built with other HNSW parameters than the settings' ({index.graph}): "
            "REINDEX CONCURRENTLY with them (searches keep the old graph meanwhile)",
        )
        self._name_the_graph(index)
        self._guarded(index, lambda: self.execute(index.set_params_sql))
        self._build(index, index.reindex_statement(concurrently=True), "REINDEX CONCURRENTLY")

    def _name_the_graph(self, index: VectorIndex) -> None:
        """A note that does not name its graph yet (an index built before notes did, or by
        `alembic upgrade --sql`) gets the catalog's parameters, which built it, before the ALTER
        changes them: else a REINDEX stopped after the ALTER would pass for done."""
        row = self.connection.execute(text(index.note_sql)).first()
        if row is None:
            return
        note = build_note(row[1])
        if "graph" in note:
            return
        note["graph"] = graph_of(row[0])
        self._comment(index, note)

    def _drop(self, index: VectorIndex, *, concurrently: bool, why: str) -> None:
        if self._exists(index):
            self.reporter.note(index.name, why)
        self._guarded(index, lambda: self.execute(index.drop_statement(concurrently=concurrently)))

    def _drop_leftovers(self, index: VectorIndex) -> None:
        for drop in self.execute(index.leftovers_sql):
            self.reporter.note(index.name, f"removing a failed rebuild's copy: {drop}")
            self._guarded(index, partial(self.execute, drop))

    def _plan(self, index: VectorIndex) -> MemoryPlan:
        rows = int(self.scalar(index.rows_sql) or 0)
        dims = int(self.scalar(index.dims_sql) or 0)
        return plan_memory(
            rows,
            dims,
            index.params["m"],
            self.options.maintenance_work_mem,
            self.options.maintenance_work_mem_max,
            bytes_per_dim(index.opclass),
        )

    def _build(self, index: VectorIndex, statement: str, how: str) -> None:
        build = _Build(self._plan(index))
        self.execute(f"SET maintenance_work_mem = '{format_size(build.plan.session)}'")
        self.reporter.note(index.name, f"building ({how}): {build.plan.describe()}")
        pid = int(self.scalar("SELECT pg_backend_pid()"))
        began = time.monotonic()
        watcher = ProgressWatcher(
            self.dsn,
            pid,
            lambda reading: self.reporter.progress(index.name, reading),
            self.options.progress_interval,
        )
        with self._notices(index, build.notices), watcher:
            self._guarded(index, lambda: self.execute(statement))
        self.reporter.done(index.name)
        seconds = time.monotonic() - began
        self._record(index, build, seconds, how)
        size = int(self.scalar(f"SELECT pg_relation_size('{index.name}'::regclass)") or 0)
        spilled = "; spilled to disk (see above)" if build.spilled else ""
        self.reporter.note(index.name, f"valid, {human(size)}, built in {seconds:.1f} s{spilled}")

    def _record(self, index: VectorIndex, build: _Build, seconds: float, how: str) -> None:
        """The last build, kept on the index itself (dropped with it): `tasktracker index status`."""
        note = {
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(seconds, 1),
            "rows": build.plan.rows,
            "how": how,
            "graph": index.graph,
            "maintenance_work_mem": format_size(build.plan.session),
            "spilled": build.spilled,
        }
        self._comment(index, note)

    def _comment(self, index: VectorIndex, note: dict[str, Any]) -> None:
        literal = json.dumps(note).replace("'", "''")
        self._guarded(index, lambda: self.execute(f"COMMENT ON INDEX {index.name} IS '{literal}'"))

    @contextmanager
    def _notices(self, index: VectorIndex, sink: list[str]) -> Iterator[None]:
        """pgvector's NOTICEs during the build (the spill warning above all), shown and kept."""
        raw = self.connection.connection.driver_connection

        def listener(_conn: object, message: Any) -> None:
            said = str(getattr(message, "message", message))
            sink.append(said)
            self.reporter.note(index.name, f"server: {said}")

        if raw is None:
            yield
            return
        raw.add_log_listener(listener)
        try:
            yield
        finally:
            raw.remove_log_listener(listener)

    def _guarded(self, index: VectorIndex, step: Callable[[], object]) -> None:
        """Run a statement; a failure or an interrupt ends in one line naming state and repair."""
        try:
            step()
        except DBAPIError as exc:
            self.connection.invalidate()  # the backend may be gone: no reset on close
            raise IndexBuildError(self._failure(index, _cause(exc))) from None
        except (TimeoutError, OSError) as exc:  # the client's side gave up or lost the server
            self.connection.invalidate()
            cause = f"{type(exc).__name__} on the client's connection"
            raise IndexBuildError(self._failure(index, cause)) from None
        except (asyncio.CancelledError, KeyboardInterrupt):
            # Ctrl-C or SIGTERM: asyncpg has cancelled the statement on the server
            self.connection.invalidate()
            raise IndexBuildInterrupted(
                f"interrupted while building {index.name}: {self._after(index)}. {REPAIR_HINT}"
            ) from None

    def _failure(self, index: VectorIndex, cause: str) -> str:
        return f"building {index.name} failed: {cause}. {self._after(index)}. {REPAIR_HINT}"

    def _after(self, index: VectorIndex) -> str:
        """The index's state, read on a new connection (the build's may be dead)."""
        try:
            state = run_in_thread(lambda: _read_state(self.dsn, index))
        except (OSError, asyncpg.PostgresError) as exc:
            return f"its state is unknown (cannot reconnect: {type(exc).__name__})"
        if state is None:
            return f"{index.name} does not exist (searches on {index.table} scan the table)"
        if not (state[0] and state[1]):
            return f"{index.name} is left INVALID (searches on {index.table} scan the table)"
        return f"{index.name} is valid"


async def _read_state(dsn: str, index: VectorIndex) -> tuple[bool, bool, bool] | None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        row = await conn.fetchrow(index.state_sql)
        return None if row is None else (bool(row[0]), bool(row[1]), bool(row[2]))
    finally:
        await conn.close()


def _cause(exc: DBAPIError) -> str:
    """The server's words, with the fix for the failures an operator can act on."""
    orig = exc.orig
    inner = getattr(orig, "__cause__", None) or orig
    message = str(inner).strip().splitlines()[0] if str(inner).strip() else type(inner).__name__
    if isinstance(inner, asyncpg.LockNotAvailableError):
        return (
            f"{message} (INDEX_LOCK_TIMEOUT: a long transaction held the table; retry or raise it)"
        )
    if "could not resize shared memory segment" in message:
        return f"{message} (parallel build: give the server more /dev/shm, or INDEX_PARALLEL_WORKERS=0)"
    if isinstance(inner, asyncpg.AdminShutdownError | asyncpg.QueryCanceledError):
        return f"{message} (the build's backend was stopped)"
    return message
