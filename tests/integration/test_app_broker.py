"""Each API app publishes through a NATS client of its own, on its own settings' NATS_URL and stream.

The apps of one process once shared the worker's process-wide broker: built from the environment,
it ignored an app's settings, and its client, connected on the event loop of whichever app started
it, made every publish of an app on another loop time out and retry for 30 s. A fuzzed API that
ran after other in-process apps stalled CI that way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg
import httpx
import nats
import pytest

from app import broker as broker_module
from app.core.urls import nats_servers
from app.main import create_app
from testkit.stubs.openai_stub import OpenAIStub
from tests.apps import served, stub_settings

MESSAGE = {"author": "ana", "channel": "ops", "content": "the deploy is rolled back"}


async def stream_messages(nats_url: str, stream: str) -> int:
    client = await nats.connect(nats_servers(nats_url))
    try:
        return int((await client.jetstream().stream_info(stream)).state.messages)
    finally:
        await client.close()


def test_two_apps_on_two_event_loops_each_queue_to_their_own_stream(
    make_db: Callable[[], str], nats_url: str
) -> None:
    url = make_db()
    with OpenAIStub(dims=384, api_key="k") as stub:
        first, second = (
            stub_settings(url, stub, nats_url, key="k", stream=name, auth_enabled=False)
            for name in ("first", "second")
        )
        # Both serve at once, each on its own thread's event loop.
        with served(create_app(first)) as one, served(create_app(second)) as two:
            for live, count in ((one, 1), (two, 2), (one, 3)):
                for _ in range(count):
                    created = httpx.post(f"{live.url}/api/v1/messages", json=MESSAGE, timeout=60)
                    assert created.status_code == 201, created.text
                    assert created.json()["embedding"] == "queued", created.text
    # Nothing consumes these streams: each holds exactly the tasks its app published.
    assert asyncio.run(stream_messages(nats_url, first.nats_stream)) == 4
    assert asyncio.run(stream_messages(nats_url, second.nats_stream)) == 2


async def scalar(url: str, sql: str) -> object:
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetchval(sql)
    finally:
        await connection.close()


async def delete_stream(nats_url: str, stream: str) -> None:
    client = await nats.connect(nats_servers(nats_url))
    try:
        await client.jetstream().delete_stream(stream)
    finally:
        await client.close()


def test_a_batch_the_broker_does_not_take_waits_out_one_retry_window_not_one_per_task(
    make_db: Callable[[], str],
    nats_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """JetStream connected but not answering (its stream is gone): the first task's publish
    retries for PUBLISH_RETRY_SECONDS, then the whole batch is left to the sweeper at once."""
    monkeypatch.setattr(broker_module, "PUBLISH_RETRY_SECONDS", 3.0)
    url = make_db()
    with OpenAIStub(dims=384, api_key="k") as stub:
        settings = stub_settings(
            url, stub, nats_url, key="k", stream="gone", auth_enabled=False, task_batch_size=50
        )
        with served(create_app(settings)) as live:
            asyncio.run(delete_stream(nats_url, settings.nats_stream))
            batch = {"messages": [{**MESSAGE, "content": f"note {i}"} for i in range(200)]}
            with caplog.at_level(logging.INFO, logger="app"):
                created = httpx.post(f"{live.url}/api/v1/messages/batch", json=batch, timeout=60)
    assert created.status_code == 201, created.text
    assert created.json()["embedding"] == "pending"
    retried = [r for r in caplog.records if "JetStream did not answer" in r.getMessage()]
    given_up = [r for r in caplog.records if "could not enqueue" in r.getMessage()]
    assert retried, "the first publish was retried"
    # One give-up for the four tasks of 50, and no publish tried after it.
    assert len(given_up) == 1 and "could not enqueue 200 messages" in given_up[0].getMessage()
    waiting = asyncio.run(
        scalar(url, "SELECT count(*) FROM messages WHERE embedding_queued_at IS NULL")
    )
    assert waiting == 200  # unmarked: the sweeper publishes them
