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
) -> None:
    """Consume embedding and extraction tasks from NATS JetStream until SIGINT/SIGTERM."""
    # The worker loop imports the broker, the models and the providers: only when it runs.
    from app.worker.loop import run_worker

    run(lambda: run_worker(get_settings(), sweeper=not no_sweeper))
