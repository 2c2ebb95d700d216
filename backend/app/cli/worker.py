"""`tasktracker worker`: consume the embedding and extraction tasks until SIGINT/SIGTERM."""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli._console import run
from app.core.config import get_settings


def worker(
    no_sweeper: Annotated[
        bool, typer.Option("--no-sweeper", help="Do not run the sweeper.")
    ] = False,
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1, max=256, help="Tasks in flight at once (default: WORKER_MAX_ASYNC_TASKS, 4)."
        ),
    ] = None,
) -> None:
    """Consume embedding and extraction tasks from NATS JetStream until SIGINT/SIGTERM."""
    # The worker loop imports the broker, the models and the providers: only when it runs.
    from app.worker.loop import run_worker

    settings = get_settings()
    if concurrency is not None:
        settings = settings.model_copy(update={"worker_max_async_tasks": concurrency})
    run(lambda: run_worker(settings, sweeper=not no_sweeper))
