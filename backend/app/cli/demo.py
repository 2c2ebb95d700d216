"""`tasktracker demo`: the outage and the cure, end to end, on the embedded defaults."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from app.cli._console import check_choice, console, run
from app.core.config import get_settings
from app.core.enums import ProviderType


def demo(
    provider: Annotated[str, typer.Option(help="local (default), openai or ollama.")] = "local",
    scale: Annotated[int, typer.Option(min=0, max=1_000_000, help="Add N generated messages.")] = 0,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the demo database afterwards.")
    ] = False,
    serve: Annotated[
        bool, typer.Option("--serve", help="Leave the API and worker running.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the measured figures as JSON.")
    ] = False,
) -> None:
    """Replay the outage and the cure end to end on the embedded defaults (about a minute)."""
    check_choice("--provider", provider, [p.value for p in ProviderType])
    # The runner pulls in the whole stack: imported only when the demo runs.
    from app.demo.runner import DemoOptions, dump_json, run_demo

    options = DemoOptions(provider=provider, scale=scale, keep=keep, serve=serve, as_json=as_json)
    report = run(lambda: run_demo(options, get_settings(), console))
    if as_json:
        sys.stdout.write(dump_json(report) + "\n")
