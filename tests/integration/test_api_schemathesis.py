"""Schemathesis over the whole API on a live server (real HTTP): no 5xx, responses match the schema.

Calls carry an admin token, so every operation is exercised past its access check.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from app.core.config import Settings
from app.core.embedded import free_port
from app.core.urls import to_asyncpg_url
from app.main import create_app
from app.models.api_token import TokenScope
from app.services import token_service
from tests.stubs.openai_stub import OpenAIStub

pytestmark = pytest.mark.slow


def admitted(_ctx: Any, response: Any, case: Any) -> bool:
    """The admin token is accepted everywhere: no call stops at the access check."""
    assert response.status_code not in (401, 403), (case.path, response.text)
    return True


def admin_token(url: str) -> str:
    """An admin token stored in the database at `url`."""

    async def create() -> str:
        engine = create_async_engine(to_asyncpg_url(url))
        try:
            async with AsyncSession(engine, expire_on_commit=False) as session:
                token, _ = await token_service.create_token(session, TokenScope.admin, "fuzz")
                await session.commit()
            return token
        finally:
            await engine.dispose()

    return asyncio.run(create())


@pytest.fixture(scope="module")
def live_api(make_db: Callable[[], str], nats_url: str) -> Iterator[tuple[str, dict[str, str]]]:
    url = make_db()
    headers = {"Authorization": f"Bearer {admin_token(url)}"}
    with OpenAIStub(dims=384, api_key="k") as stub:
        app = create_app(
            Settings(
                database_url=url,
                nats_url=nats_url,
                nats_stream=f"st{uuid.uuid4().hex[:8]}",
                embedding_provider="openai",
                embedding_model="text-embedding-3-small",
                embedding_base_url=stub.base_url,
                embedding_api_key="k",  # type: ignore[arg-type]
                embedding_dimensions=384,
            )
        )
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}", headers
        server.should_exit = True
        thread.join(10)


def test_no_server_errors_and_schema_conformance(live_api: tuple[str, dict[str, str]]) -> None:
    base_url, headers = live_api
    assert httpx.get(f"{base_url}/api/v1/messages").status_code == 401
    assert httpx.get(f"{base_url}/api/v1/messages", headers=headers).status_code == 200
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    failures = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def check(case: Any) -> None:
            case.call_and_validate(
                base_url=base_url,
                headers=headers,
                checks=[not_a_server_error, response_schema_conformance, admitted],
            )

        try:
            check()
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure, then report
            failures.append(f"{operation.label}: {str(exc)[:600]}")
    assert not failures, "\n\n".join(failures)
