"""`tasktracker services`: the whole stack in the foreground, and what runs where."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
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
from app.core.errors import AppError, ConfigurationError
from app.core.nats_cluster import NatsCluster
from app.core.supervisor import Child, api_child, supervise, worker_child
from app.core.urls import redact_nats_url, redact_url


def _state_file(settings: Settings) -> Path:
    return settings.data_dir / "services.json"


@dataclass(frozen=True)
class Topology:
    """How many of each: worker processes, and NATS nodes (0: one server, embedded or NATS_URL)."""

    workers: int = 1
    nats_cluster: int = 0


def run_services(
    settings: Settings,
    *,
    host: str,
    port: int,
    migrate: bool,
    console: Console,
    topology: Topology | None = None,
) -> int:
    """Start (or join) Postgres and NATS, run migrations, then the workers and the API."""
    topology = topology or Topology()
    cluster: NatsCluster | None = None
    try:
        db_url = endpoints.ensure_database_url(settings)
        env = {"DATABASE_URL": db_url}
        if topology.nats_cluster:
            cluster = _start_cluster(settings, topology.nats_cluster, console)
            env["NATS_URL"] = cluster.url
            env["NATS_STREAM_REPLICAS"] = str(min(3, topology.nats_cluster))
        else:
            env["NATS_URL"] = endpoints.ensure_nats_url(settings)
        if migrate:
            from app.db import direct_database_url  # the database layer: only here
            from app.db import migrate as migrate_database

            migrate_database(direct_database_url(settings))
        children = [*_workers(env, topology.workers), api_child(env, host, port, "--no-access-log")]
        api_url = f"http://{host}:{port}"
        console.print(
            f"postgres: {redact_url(db_url)}\nnats:     {redact_nats_url(env['NATS_URL'])}\n"
            f"workers:  {topology.workers}\napi:      {api_url}/docs\n"
            f"console:  {api_url}/console (sign in with a token)"
        )
        state = {
            "pid": os.getpid(),
            "database": redact_url(db_url),
            "nats": redact_nats_url(env["NATS_URL"]),
            "api": api_url,
            "workers": topology.workers,
        }
        _state_file(settings).parent.mkdir(parents=True, exist_ok=True)
        _state_file(settings).write_text(json.dumps(state))
        return supervise(children)
    finally:
        # Ctrl-C reaches every process of the group, and `uv run` forwards one more: stopping
        # the embedded servers must not be cut short by it (it left nats-server running).
        with signals_ignored():
            _state_file(settings).unlink(missing_ok=True)
            if cluster is not None:
                cluster.stop()
            endpoints.release()


def _start_cluster(settings: Settings, size: int, console: Console) -> NatsCluster:
    if settings.nats_url:
        raise ConfigurationError(
            "--nats-cluster starts a local cluster, but NATS_URL is set. Fix: unset NATS_URL, "
            "or drop --nats-cluster to use the servers it names."
        )
    console.print(f"starting a {size}-node JetStream cluster on 127.0.0.1 ...")
    return NatsCluster(size, settings.data_dir / "nats-cluster").start()


def _workers(env: dict[str, str], count: int) -> list[Child]:
    """`count` worker processes on the shared durable consumer; the first runs the sweeper
    (one is enough: the others would scan the same rows)."""
    return [
        worker_child(env, *(() if i == 0 else ("--no-sweeper",)), name=f"worker-{i + 1}")
        for i in range(count)
    ]


def print_services_status(console: Console) -> None:
    """A table: each service, where it is, whether it runs."""
    settings = get_settings()
    table = Table(title="tasktracker services")
    for column in ("service", "where", "running"):
        table.add_column(column)
    table.add_row("postgres", *_postgres_status(settings))
    state_path = _state_file(settings)
    state = json.loads(state_path.read_text()) if state_path.exists() else None
    up = state is not None and psutil.pid_exists(state["pid"])
    nats = _nats_status(settings)
    if up and state and "," in state.get("nats", ""):
        nats = (f"cluster {state['nats']}", "yes")
    table.add_row("nats", *nats)
    table.add_row("worker + api", state["api"] if state else "-", "yes" if up else "no")
    if up and state and state.get("workers", 1) > 1:
        table.add_row("workers", f"{state['workers']} processes", "yes")
    console.print(table)


def _postgres_status(settings: Settings) -> tuple[str, str]:
    if settings.database_url:
        return redact_url(settings.database_url), "external"
    pid_file = settings.postgres_dir / "postmaster.pid"
    running = pid_file.exists() and psutil.pid_exists(int(pid_file.read_text().split()[0]))
    return f"embedded, {settings.postgres_dir}", "yes" if running else "no"


def _nats_status(settings: Settings) -> tuple[str, str]:
    if settings.nats_url:
        return redact_nats_url(settings.nats_url), "external"
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
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="Worker processes on the shared consumer.")
    ] = 1,
    nats_cluster: Annotated[
        int,
        typer.Option(
            min=0, max=7, help="Start a local JetStream cluster of N nodes (3: an R3 stream)."
        ),
    ] = 0,
) -> None:
    """Run Postgres, NATS, the workers and the API in the foreground; Ctrl-C stops them all."""
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
            topology=Topology(workers=workers, nats_cluster=nats_cluster),
        )
    except AppError as exc:
        fail(exc.message, code=1)
    raise typer.Exit(code)
