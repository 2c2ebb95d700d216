"""Schemathesis over the whole API on a live server (real HTTP): no 5xx, responses match the schema."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from app.core.config import Settings
from app.core.embedded import free_port
from app.main import create_app
from tests.stubs.openai_stub import OpenAIStub

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live_api(make_db: Callable[[], str], nats_url: str) -> Iterator[str]:
    with OpenAIStub(dims=384, api_key="k") as stub:
        app = create_app(
            Settings(
                database_url=make_db(),
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
        yield f"http://127.0.0.1:{port}"
        server.should_exit = True
        thread.join(10)


def test_no_server_errors_and_schema_conformance(live_api: str) -> None:
    schema = schemathesis.openapi.from_url(f"{live_api}/openapi.json")
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
                base_url=live_api, checks=[not_a_server_error, response_schema_conformance]
            )

        try:
            check()
        except Exception as exc:  # noqa: BLE001 - collect every operation's failure, then report
            failures.append(f"{operation.label}: {str(exc)[:600]}")
    assert not failures, "\n\n".join(failures)
