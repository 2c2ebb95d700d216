"""`tasktracker services`: the whole stack in the foreground, and what runs where."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import psutil
import typer
from rich.console import Console
from rich.table import Table

from app.cli._console import console, fail
from app.core import endpoints
from app.core.config import Settings, get_settings
from app.core.embedded import signals_ignored
from app.core.errors import AppError
from app.core.supervisor import api_child, supervise, worker_child
from app.core.urls import redact_url


def _state_file(settings: Settings) -> Path:
    return settings.data_dir / "services.json"


def run_services(
    settings: Settings, *, host: str, port: int, migrate: bool, console: Console
) -> int:
    """Start (or join) Postgres and NATS, run migrations, then the worker and the API."""
    try:
        db_url = endpoints.ensure_database_url(settings)
        nats = endpoints.ensure_nats_url(settings)
        if migrate:
            from app.db import migrate as migrate_database  # the database layer: only here

            migrate_database(db_url)
        env = {"DATABASE_URL": db_url, "NATS_URL": nats}
        children = [worker_child(env), api_child(env, host, port, "--no-access-log")]
        api_url = f"http://{host}:{port}"
        console.print(
            f"postgres: {redact_url(db_url)}\nnats:     {nats}\napi:      {api_url}/docs\n"
            f"console:  {api_url}/console (sign in with a token)"
        )
        state = {"pid": os.getpid(), "database": redact_url(db_url), "nats": nats, "api": api_url}
        _state_file(settings).parent.mkdir(parents=True, exist_ok=True)
        _state_file(settings).write_text(json.dumps(state))
        return supervise(children)
    finally:
        # Ctrl-C reaches every process of the group, and `uv run` forwards one more: stopping
        # the embedded servers must not be cut short by it (it left nats-server running).
        with signals_ignored():
            _state_file(settings).unlink(missing_ok=True)
            endpoints.release()


def print_services_status(console: Console) -> None:
    """A table: each service, where it is, whether it runs."""
    settings = get_settings()
    table = Table(title="tasktracker services")
    for column in ("service", "where", "running"):
        table.add_column(column)
    table.add_row("postgres", *_postgres_status(settings))
    table.add_row("nats", *_nats_status(settings))
    state_path = _state_file(settings)
    state = json.loads(state_path.read_text()) if state_path.exists() else None
    up = state is not None and psutil.pid_exists(state["pid"])
    table.add_row("worker + api", state["api"] if state else "-", "yes" if up else "no")
    console.print(table)


def _postgres_status(settings: Settings) -> tuple[str, str]:
    if settings.database_url:
        return redact_url(settings.database_url), "external"
    pid_file = settings.postgres_dir / "postmaster.pid"
    running = pid_file.exists() and psutil.pid_exists(int(pid_file.read_text().split()[0]))
    return f"embedded, {settings.postgres_dir}", "yes" if running else "no"


def _nats_status(settings: Settings) -> tuple[str, str]:
    if settings.nats_url:
        return redact_url(settings.nats_url), "external"
    state = settings.nats_dir / "server.json"
    if not state.exists():
        return f"embedded, {settings.nats_dir}", "no"
    data = json.loads(state.read_text())
    running = psutil.pid_exists(data["pid"])
    return f"nats://127.0.0.1:{data['port']} ({settings.nats_dir})", "yes" if running else "no"


def services(
    show_status: Annotated[bool, typer.Option("--status", help="Tell what runs where.")] = False,
    host: Annotated[str | None, typer.Option(help="API host.")] = None,
    port: Annotated[int | None, typer.Option(help="API port.")] = None,
    migrate: Annotated[bool, typer.Option(help="Run `alembic upgrade head` first.")] = True,
) -> None:
    """Run Postgres, NATS, the worker and the API in the foreground; Ctrl-C stops them all."""
    if show_status:
        print_services_status(console)
        return
    settings = get_settings()
    try:
        code = run_services(
            settings,
            host=host or settings.api_host,
            port=port or settings.api_port,
            migrate=migrate,
            console=console,
        )
    except AppError as exc:
        fail(exc.message, code=1)
    raise typer.Exit(code)
