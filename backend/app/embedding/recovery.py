"""Which dependencies this worker saw fail, and a wake-up for the sweeper when one is back.

A task that fails on the database, the broker or the provider says so (`failed`); the first
success after that (`back`) wakes the sweeper, which then takes at once, without its grace
period, the rows that waited through the outage with no task (a publish that failed, rows
handed back). A task that fails holding rows it filled in from other tasks hands them back
and wakes the sweeper too (`sweep_now`). While the database is down the sweeper probes it
every few seconds, so a returning database is noticed even by an idle worker.
"""

from __future__ import annotations

import asyncio
import logging

logger = logging.getLogger(__name__)
DATABASE = "the database"
BROKER = "NATS"
PROVIDER = "the embedding provider"


class Recovery:
    """The dependencies seen down, and the sweeper's wake-up (set by the worker)."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.wake: asyncio.Event | None = None

    def failed(self, dependency: str) -> None:
        self.down.add(dependency)

    def sweep_now(self) -> None:
        """Wake this worker's sweeper: it takes every row that waits now, not after its grace
        period (rows that waited through an outage, rows a failed task handed back because
        their own tasks are done). A worker run without a sweeper leaves them to another's
        next pass."""
        if self.wake is not None:
            self.wake.set()

    def back(self, dependency: str) -> None:
        if dependency not in self.down:
            return
        self.down.discard(dependency)
        logger.warning("%s is back: the sweeper takes what waited for it now", dependency)
        self.sweep_now()
