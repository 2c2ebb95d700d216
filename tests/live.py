"""The API as a real server (uvicorn in a child process, on a free port) beside a real worker:
what the browser tests and the metrics test talk to over HTTP."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import token_service
from app.core.embedded import free_port
from app.core.supervisor import Child, api_child, stop_all
from app.models.api_token import TokenScope
from testkit.launchers import WorkerProcess
from tests.integration.conftest import Pipeline


@dataclass
class LiveStack:
    pipeline: Pipeline
    api: Child
    base_url: str
    worker: WorkerProcess
    worker_metrics_url: str | None

    async def token(self, scope: TokenScope, name: str = "live test") -> str:
        async with AsyncSession(self.pipeline.engine, expire_on_commit=False) as session:
            token, _ = await token_service.create_token(session, scope, name)
            await session.commit()
        return token


def wait_api_ready(child: Child, base_url: str, timeout: float = 90.0) -> None:
    """Until /api/v1/health/ready answers 200 (the lifespan opened the broker and the engine)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if child.exited() is not None:
            raise RuntimeError(f"the API exited with {child.exited()}")
        try:
            response = httpx.get(f"{base_url}/api/v1/health/ready", timeout=5)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.TransportError as exc:
            last = type(exc).__name__
        time.sleep(0.2)
    raise RuntimeError(f"the API was not ready after {timeout}s: {last}")


@asynccontextmanager
async def live_stack(
    pipeline: Pipeline, *, worker_metrics: bool = False, **env: str
) -> AsyncIterator[LiveStack]:
    """The pipeline's database, stream and stub, with a worker and the API on a free port."""
    pipeline.env.update(env)
    metrics_url = None
    if worker_metrics:
        port = free_port()
        pipeline.env["WORKER_METRICS_PORT"] = str(port)
        metrics_url = f"http://127.0.0.1:{port}/metrics"
    worker = pipeline.worker()
    port = free_port()
    api = api_child(dict(pipeline.env), "127.0.0.1", port, "--log-level", "warning")
    api.start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_api_ready(api, base_url)
        yield LiveStack(pipeline, api, base_url, worker, metrics_url)
    finally:
        stop_all([api])


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Samples:
    """Every sample of a scrape, by (name, sorted labels), through Prometheus's own parser."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series does not exist yet (a counter never moved)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
