"""`tasktracker bench`: registered only where the benchmarks are importable (a dev checkout).

The benchmarks live beside the product, in the top-level `bench` package: the wheel and the
image do not carry them, and nothing in `app` imports them. A development install puts the
checkout on sys.path, so there `tasktracker bench ...` is the same as `python -m bench ...`.
"""

from __future__ import annotations

import importlib
import importlib.util

import typer


def register(app: typer.Typer) -> None:
    """Add the `bench` command to `app` when the bench package can be found."""
    if importlib.util.find_spec("bench") is None:
        return
    commands = importlib.import_module("bench.cli")
    app.command("bench")(commands.bench)
