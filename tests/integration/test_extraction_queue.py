"""`POST /knowledge/extract` with all_pending queues each pending message once: the messages it
queued are `processing` until their task is done or has failed, and a lost claim comes back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import text

from app.core.embedded import free_port
from app.core.supervisor import Child, api_child, stop_all
from tests.integration.conftest import Pipeline, insert_messages

pytestmark = pytest.mark.slow
EXTRACT = "/api/v1/knowledge/extract"


@pytest.fixture
def api(pipeline: Pipeline) -> Iterator[str]:
    """The real API (auth off, loopback) on the pipeline's database and stream; no worker yet."""
    port = free_port()
    child: Child = api_child(
        {**pipeline.env, "AUTH_ENABLED": "false"}, "127.0.0.1", port, "--log-level", "warning"
    )
    child.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and child.exited() is None:
            try:
                if httpx.get(f"{url}/api/v1/health/live", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            pytest.fail(f"the API did not start (exit code {child.exited()})")
        yield url
    finally:
        stop_all([child])


async def statuses(pipeline: Pipeline) -> dict[str, int]:
    async with pipeline.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT extraction_status, count(*) FROM messages GROUP BY 1")
        )
        return {str(status): int(count) for status, count in rows}


async def test_repeated_all_pending_calls_queue_each_message_once(
    pipeline: Pipeline, api: str
) -> None:
    await insert_messages(pipeline.engine, 30)
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        first = (await client.post(EXTRACT, json={"all_pending": True, "window": 10})).json()
        assert first == {"messages": 30, "tasks": 3, "status": "queued"}, first
        assert await statuses(pipeline) == {"processing": 30}
        for _ in range(5):  # nothing new: nothing queued, however often it is asked
            again = (await client.post(EXTRACT, json={"all_pending": True})).json()
            assert again == {"messages": 0, "tasks": 0, "status": "queued"}, again
        pipeline.worker()
        deadline = time.monotonic() + 120
        while (await statuses(pipeline)) != {"done": 30}:
            assert time.monotonic() < deadline, await statuses(pipeline)
            await asyncio.sleep(0.3)
        await insert_messages(pipeline.engine, 2, prefix="late")
        late = (await client.post(EXTRACT, json={"all_pending": True})).json()
        assert late == {"messages": 2, "tasks": 1, "status": "queued"}, late


async def test_a_stale_claim_is_queued_again(pipeline: Pipeline, api: str) -> None:
    """A task lost for good (here: claims aged by hand) does not leave its messages stuck."""
    await insert_messages(pipeline.engine, 4)
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        assert (await client.post(EXTRACT, json={"all_pending": True})).json()["messages"] == 4
        assert (await client.post(EXTRACT, json={"all_pending": True})).json()["messages"] == 0
        async with pipeline.engine.begin() as conn:
            await conn.execute(text("UPDATE messages SET updated_at = now() - interval '2 hours'"))
        again = (await client.post(EXTRACT, json={"all_pending": True})).json()
        assert again["messages"] == 4, again
