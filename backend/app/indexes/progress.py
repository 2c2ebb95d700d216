"""An index build's progress, read from pg_stat_progress_create_index while it runs, and shown.

The build's own connection is busy for the whole build, so a second connection, in a thread of
its own, polls the progress view for the builder's backend pid. On a terminal the reporter draws
a rich progress bar; elsewhere (logs, CI) it writes a plain line per phase and per tenth done.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, TextIO, TypeVar

import asyncpg

from app.indexes.catalog import PROGRESS_SELECT

log = logging.getLogger(__name__)
T = TypeVar("T")

PROGRESS_SQL = f"{PROGRESS_SELECT} WHERE p.pid = $1"


@dataclass(frozen=True)
class Progress:
    """One reading of pg_stat_progress_create_index for the build's backend."""

    phase: str
    tuples_done: int
    tuples_total: int
    blocks_done: int
    blocks_total: int
    lockers_done: int
    lockers_total: int
    elapsed: float

    @property
    def done_total(self) -> tuple[int, int, str]:
        """What this phase counts: tuples while loading them, blocks while scanning."""
        if self.tuples_total > 0:
            return self.tuples_done, self.tuples_total, "tuples"
        if self.blocks_total > 0:
            return self.blocks_done, self.blocks_total, "blocks"
        if self.lockers_total > 0:
            return self.lockers_done, self.lockers_total, "lockers"
        return 0, 0, ""

    @property
    def fraction(self) -> float | None:
        done, total, _ = self.done_total
        return min(1.0, done / total) if total else None


class BuildReporter(Protocol):
    """Where the builder says what it does."""

    def note(self, index: str, message: str) -> None: ...

    def progress(self, index: str, reading: Progress) -> None: ...

    def done(self, index: str) -> None: ...


class PlainReporter:
    """A line per event, per phase and per tenth of a phase: fit for logs and CI."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self._last: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def note(self, index: str, message: str) -> None:
        self.write(f"index {index}: {message}")

    def progress(self, index: str, reading: Progress) -> None:
        fraction = reading.fraction
        tenth = int(fraction * 10) if fraction is not None else -1
        last_phase, last_tenth = self._last.get(index, ("", -1))
        if reading.phase == last_phase and tenth <= last_tenth:
            return
        self._last[index] = (reading.phase, tenth)
        self.write(f"index {index}: {describe(reading)}")

    def done(self, index: str) -> None:
        self._last.pop(index, None)


def describe(reading: Progress) -> str:
    """'building index: loading tuples 40% (24,000/60,000 tuples), 12.5 s'."""
    done, total, unit = reading.done_total
    if total:
        counted = f" {100 * done // total}% ({done:,}/{total:,} {unit})"
    else:
        counted = ""
    return f"{reading.phase}{counted}, {reading.elapsed:.1f} s"


class RichReporter:
    """A progress bar per build on a terminal."""

    def __init__(self, stream: TextIO):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

        self.console = Console(file=stream)
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}

    def note(self, index: str, message: str) -> None:
        self.console.print(f"index {index}: {message}", highlight=False, soft_wrap=True)

    def progress(self, index: str, reading: Progress) -> None:
        if index not in self._tasks:
            self.bar.start()
            self._tasks[index] = self.bar.add_task(index, total=None)
        done, total, unit = reading.done_total
        self.bar.update(
            self._tasks[index],
            description=f"{index}: {reading.phase} {f'({done:,}/{total:,} {unit})' if total else ''}",
            completed=done,
            total=total or None,
        )

    def done(self, index: str) -> None:
        task = self._tasks.pop(index, None)
        if task is not None:
            self.bar.stop()
            self.bar.remove_task(task)


def make_reporter(stream: TextIO) -> BuildReporter:
    """A progress bar on a terminal, plain lines anywhere else."""
    return RichReporter(stream) if stream.isatty() else PlainReporter(stream)


def run_in_thread(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to its end on a loop of its own in another thread.

    The builder runs inside the migration's event loop (synchronously, through run_sync), so a
    second connection cannot be awaited there; a short-lived thread with its own loop can.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(_await(make)))
        except BaseException as exc:  # handed to the caller's thread
            error.append(exc)

    thread = threading.Thread(target=target, name="index-helper", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


async def _await(make: Callable[[], Awaitable[T]]) -> T:
    return await make()


class ProgressWatcher:
    """Polls the progress of backend `pid` every `interval` seconds until the block ends."""

    def __init__(
        self, dsn: str, pid: int, on_reading: Callable[[Progress], None], interval: float = 1.0
    ):
        self.dsn = dsn
        self.pid = pid
        self.on_reading = on_reading
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="index-progress", daemon=True)

    def __enter__(self) -> ProgressWatcher:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        try:
            asyncio.run(self._poll())
        except Exception as exc:  # progress is best effort: the build goes on without it
            log.debug("index progress unavailable: %s", exc)

    async def _poll(self) -> None:
        conn = await asyncpg.connect(self.dsn, timeout=10)
        try:
            while not self._stop.is_set():
                row = await conn.fetchrow(PROGRESS_SQL, self.pid)
                if row is not None:
                    self.on_reading(reading_of(row))
                await asyncio.to_thread(self._stop.wait, self.interval)
        finally:
            await conn.close()


def reading_of(row: Sequence[Any]) -> Progress:
    """A row of PROGRESS_SQL as a Progress (the view's counters are NULL in some phases)."""
    done, total, blocks, blocks_total, lockers, lockers_total = (
        int(row[i] or 0) for i in range(1, 7)
    )
    return Progress(
        str(row[0]), done, total, blocks, blocks_total, lockers, lockers_total, float(row[7] or 0)
    )
