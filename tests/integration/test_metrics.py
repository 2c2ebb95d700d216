"""/metrics through a real API server and worker: the Prometheus text parser reads both, and
the counters move with an ingest and a search; access is refused without a token."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import httpx
import pytest

from app.models.api_token import TokenScope
from tests.integration.conftest import Pipeline
from tests.live import LiveStack, Samples, live_stack, parse_metrics, value

pytestmark = pytest.mark.slow
SEARCH_ROUTE = "/api/v1/semantic_search/messages"
PROVIDER = "settings:openai"  # the provider the settings describe (no providers table row)


async def scrape(url: str, token: str | None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.get(url, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse_metrics(response.text)


async def scrape_until(
    url: str, token: str | None, done: Callable[[Samples], bool], timeout: float = 120.0
) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples = await scrape(url, token)
        if done(samples) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.5)


async def ingest(stack: LiveStack, token: str, contents: list[str]) -> None:
    body = {"messages": [{"author": "ops", "channel": "deploys", "content": c} for c in contents]}
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as client:
        response = await client.post(
            "/api/v1/messages/batch", json=body, headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code in (200, 201), response.text


async def test_counters_move_with_an_ingest_and_a_search(pipeline: Pipeline) -> None:
    async with live_stack(pipeline, worker_metrics=True, LOG_FORMAT="json") as stack:
        assert stack.worker_metrics_url is not None
        token = await stack.token(TokenScope.write)
        url = f"{stack.base_url}/metrics"
        async with httpx.AsyncClient() as client:
            refused = await client.get(url)
            wrong = await client.get(url, headers={"Authorization": "Bearer tt_" + "x" * 43})
        assert refused.status_code == 401 and wrong.status_code == 401

        stream = stack.pipeline.env["NATS_STREAM"]
        before = await scrape_until(  # the worker's first heartbeat
            url, token, lambda s: value(s, "tasktracker_workers_seen", stream=stream) == 1
        )
        assert value(before, "tasktracker_workers_seen", stream=stream) == 1
        assert value(before, "tasktracker_rows", entity="messages") == 0
        assert value(before, "tasktracker_jetstream_up", **_queue(stack)) == 1
        worker_before = await scrape(stack.worker_metrics_url, None)

        await ingest(stack, token, [f"metrics message {i} about the rollout" for i in range(25)])
        after = await scrape_until(
            url, token, lambda s: value(s, "tasktracker_rows_embedded", entity="messages") == 25
        )
        assert value(after, "tasktracker_rows", entity="messages") == 25
        assert value(after, "tasktracker_rows_embedded", entity="messages") == 25
        assert value(after, "tasktracker_rows_pending", entity="messages") == 0
        assert value(after, "tasktracker_rows_parked", entity="messages") == 0
        assert value(after, "tasktracker_oldest_pending_age_seconds", entity="messages") == 0
        assert (
            value(
                after,
                "tasktracker_rows_embedded_by_model",
                entity="messages",
                model="text-embedding-3-small",
            )
            == 25
        )
        ingested = {"method": "POST", "route": "/api/v1/messages/batch"}
        assert value(after, "tasktracker_http_requests_total", **ingested, status="201") == 1

        searched = {"entity": "messages", "mode": "vector"}
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as client:
            response = await client.post(
                SEARCH_ROUTE,
                json={"query": "metrics message 3 about the rollout", "limit": 3},
                headers={"Authorization": f"Bearer {token}"},
            )
        assert response.status_code == 200, response.text
        assert response.json()["results"][0]["similarity"] == pytest.approx(1.0, abs=1e-4)
        route = {"method": "POST", "route": SEARCH_ROUTE, "status": "200"}
        # A request is counted once its route returned, which may be just after the client
        # has its answer (the session closes after the response): wait for it.
        final = await scrape_until(
            url, token, lambda s: value(s, "tasktracker_http_requests_total", **route) == 1
        )
        assert value(final, "tasktracker_http_requests_total", **route) == 1
        count = "tasktracker_search_duration_seconds_count"
        assert value(final, count, **searched) == value(after, count, **searched) + 1
        # The query vector came from the provider, in the API process.
        api_query = {"provider": PROVIDER, "kind": "query", "outcome": "ok"}
        assert value(final, "tasktracker_provider_requests_total", **api_query) >= 1

        worker = await scrape(stack.worker_metrics_url, None)
        task = {"task": "embeddings.embed_messages_batch", "outcome": "ok"}
        assert value(worker, "tasktracker_tasks_total", **task) > value(
            worker_before, "tasktracker_tasks_total", **task
        )
        assert value(worker, "tasktracker_task_duration_seconds_count", **task) >= 1
        documents = {"provider": PROVIDER, "kind": "document", "outcome": "ok"}
        assert value(worker, "tasktracker_provider_requests_total", **documents) >= 1
        assert value(worker, "tasktracker_provider_inputs_total", provider=PROVIDER) >= 25

        # LOG_FORMAT=json: every line the worker wrote is one JSON object.
        lines = [line for line in stack.worker.output().splitlines() if line.strip()]
        records = [json.loads(line) for line in lines]
        assert any(r["message"].startswith("worker ready") for r in records)
        assert any(r["message"].startswith("worker metrics on") for r in records)

        # A worker that stops takes its heartbeat with it.
        assert stack.worker.stop() == 0
        gone = await scrape_until(
            url, token, lambda s: value(s, "tasktracker_workers_seen", stream=stream) == 0
        )
        assert value(gone, "tasktracker_workers_seen", stream=stream) == 0


def _queue(stack: LiveStack) -> dict[str, str]:
    stream = stack.pipeline.env["NATS_STREAM"]
    return {"stream": stream, "consumer": f"{stream}-worker"}
