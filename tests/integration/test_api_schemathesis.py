"""Schemathesis over the whole API on a live server (real HTTP): no 5xx, responses match the schema.

Calls carry an admin token, so every operation is exercised past its access check. Beyond
Schemathesis' own generation the strategy reaches three classes of input that once answered
500: date-times at the ends of the calendar with an offset that pushes them past year 1 or
9999 in UTC, an explicit null for any property of a body (whatever the schema says), and
stateful sequences over the providers routes (create, then patch, probe and list what was
created, with the links Schemathesis infers from the responses).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from app.auth import token_service
from app.core.urls import to_asyncpg_url
from app.main import create_app
from app.models.api_token import TokenScope
from testkit.stubs.openai_stub import OpenAIStub
from tests.apps import Served, served, stub_settings

pytestmark = pytest.mark.slow

# The calendar's ends, with offsets that cross them once turned into UTC, mixed with
# Schemathesis' own RFC 3339 values.
EDGE_DATE_TIMES = st.builds(
    "{}T{}{}".format,
    st.sampled_from(["0001-01-01", "9999-12-31", "0001-01-02", "9999-12-30"]),
    st.sampled_from(["00:00:00", "23:59:59", "12:00:00.999999"]),
    st.sampled_from(["+01:00", "-01:00", "+23:59", "-23:59", "+14:00", "-12:00", "Z", ""]),
)


@pytest.fixture(scope="module")
def edge_date_times() -> Iterator[None]:
    """date-time values: half Schemathesis' own, half the calendar's ends with offsets."""
    from schemathesis.specs.openapi import formats

    default = formats.get_default_format_strategies()["date-time"]
    schemathesis.openapi.format("date-time", st.one_of(default, EDGE_DATE_TIMES))
    yield
    formats.unregister_string_format("date-time")  # back to the built-in strategy


def body_properties(spec: dict[str, Any]) -> dict[tuple[str, str], list[str]]:
    """(METHOD, path) -> the properties of its JSON body's schema."""
    components = spec.get("components", {}).get("schemas", {})
    found: dict[tuple[str, str], list[str]] = {}
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            content = operation.get("requestBody", {}).get("content", {})
            schema = content.get("application/json", {}).get("schema", {})
            ref = schema.get("$ref", "")
            if ref:
                schema = components.get(ref.rsplit("/", 1)[-1], {})
            if schema.get("properties"):
                found[(method.upper(), path)] = sorted(schema["properties"])
    return found


def install_null_bodies(schema: Any, spec: dict[str, Any]) -> None:
    """Bodies as generated, or with one property (any of the schema's) set to null."""
    properties = body_properties(spec)

    def flatmap_body(context: Any, body: Any) -> st.SearchStrategy[Any]:
        operation = context.operation
        names = properties.get((operation.method.upper(), operation.path), [])
        if not isinstance(body, dict) or not names:
            return st.just(body)
        nulled = st.sampled_from(names).map(lambda name: {**body, name: None})
        return st.one_of(st.just(body), nulled)

    schema.hooks.hook(flatmap_body)


def admitted(_ctx: Any, response: Any, case: Any) -> bool:
    """The admin token is accepted everywhere: no call stops at the access check."""
    assert response.status_code not in (401, 403), (case.path, response.text)
    return True


CHECKS = [not_a_server_error, response_schema_conformance, admitted]
LIVE_DB: list[str] = []  # the live API's database
LIVE: list[Served] = []  # the live API
# No request of the API takes this long; one that does fails its test with the server's stacks
# instead of stalling the run until the pytest timeout.
REQUEST_TIMEOUT = 60.0


def forget_providers() -> None:
    """Each stateful scenario starts with no providers, so a replay sees the same answers."""

    async def delete() -> None:
        connection = await asyncpg.connect(LIVE_DB[-1])
        try:
            await connection.execute("DELETE FROM llm_providers")
        finally:
            await connection.close()

    asyncio.run(delete())


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
    LIVE_DB.append(url)
    headers = {"Authorization": f"Bearer {admin_token(url)}"}
    with OpenAIStub(dims=384, api_key="k") as stub:
        # Providers the fuzzer stores point anywhere: fail fast, never wait on retries.
        settings = stub_settings(
            url,
            stub,
            nats_url,
            key="k",
            stream="st",
            embedding_max_retries=0,
            embedding_timeout_seconds=2.0,
        )
        with served(create_app(settings)) as live:
            LIVE.append(live)
            yield live.url, headers


def load_schema(base_url: str, headers: dict[str, str]) -> Any:
    spec = httpx.get(f"{base_url}/openapi.json").json()
    schema = schemathesis.openapi.from_dict(spec)
    schema.config.update(base_url=base_url, headers=headers)
    install_null_bodies(schema, spec)
    return schema


@pytest.mark.usefixtures("edge_date_times")
def test_no_server_errors_and_schema_conformance(live_api: tuple[str, dict[str, str]]) -> None:
    base_url, headers = live_api
    assert httpx.get(f"{base_url}/api/v1/messages").status_code == 401
    assert httpx.get(f"{base_url}/api/v1/messages", headers=headers).status_code == 200
    schema = load_schema(base_url, headers)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    failures = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def check(case: Any) -> None:
            try:
                case.call_and_validate(
                    base_url=base_url, headers=headers, checks=CHECKS, timeout=REQUEST_TIMEOUT
                )
            except (requests.Timeout, TimeoutError):
                pytest.fail(
                    f"{case.method} {case.formatted_path} did not answer:\n{LIVE[-1].tasks()}"
                )

        try:
            check()
        # Schemathesis reports through a BaseExceptionGroup (FailureGroup).
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - collect, then report
            failures.append(f"{operation.label}: {str(exc)[:600]}")
    assert not failures, "\n\n".join(failures)


@pytest.mark.usefixtures("edge_date_times")
def test_stateful_sequences_over_the_providers_routes(
    live_api: tuple[str, dict[str, str]],
) -> None:
    """Create a provider, then patch (nulls included), probe, list it, in generated orders."""
    base_url, headers = live_api
    schema = load_schema(base_url, headers).include(path_regex="^/api/v1/providers")
    machine = schema.as_state_machine()
    links = [name for name in dir(machine) if "POST_api_v1_providers___201" in name]
    assert any("PATCH" in name for name in links) and any("test" in name for name in links), links

    class Providers(machine):  # type: ignore[misc, valid-type]
        def setup(self) -> None:
            forget_providers()

        def validate_response(self, response: Any, case: Any, **_kwargs: Any) -> None:
            # The same checks as above: a 4xx for a null the schema forbids is the point.
            case.validate_response(response, checks=CHECKS)

    Providers.run(
        settings=settings(
            max_examples=40,
            stateful_step_count=8,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
    )
