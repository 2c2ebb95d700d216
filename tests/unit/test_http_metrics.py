"""HTTP metrics are labelled by route template, so ids in paths never multiply the series."""

from __future__ import annotations

import uuid

import httpx
from prometheus_client import REGISTRY

from app.api.state import AppState
from app.core.config import Settings
from app.main import create_app


def requests_counted(route: str, status: str) -> float:
    labels = {"method": "GET", "route": route, "status": status}
    return REGISTRY.get_sample_value("tasktracker_http_requests_total", labels) or 0.0


async def test_requests_are_counted_by_template_and_status() -> None:
    # Nothing here reaches a server: health/live and the 401s need none.
    settings = Settings(database_url="postgresql://nobody@127.0.0.1:1/none")
    app = create_app(settings)
    app.state.tt = AppState(settings)
    template = "/api/v1/messages/{message_id}"
    before = {
        key: requests_counted(*key)
        for key in ((template, "401"), ("unmatched", "404"), ("/api/v1/health/live", "200"))
    }
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for _ in range(3):
            assert (await client.get(f"/api/v1/messages/{uuid.uuid4()}")).status_code == 401
            assert (await client.get(f"/no/such/{uuid.uuid4()}")).status_code == 404
        assert (await client.get("/api/v1/health/live")).status_code == 200
    await app.state.tt.close()
    assert requests_counted(template, "401") == before[(template, "401")] + 3
    assert requests_counted("unmatched", "404") == before[("unmatched", "404")] + 3
    assert (
        requests_counted("/api/v1/health/live", "200") == before[("/api/v1/health/live", "200")] + 1
    )
    routes = {
        sample.labels["route"]
        for family in REGISTRY.collect()
        if family.name == "tasktracker_http_requests"
        for sample in family.samples
    }
    assert not [route for route in routes if any(c.isdigit() for c in route.split("/")[-1])]
