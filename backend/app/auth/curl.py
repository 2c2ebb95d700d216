"""A ready-to-paste request for a new token: where the API is, and a search with the token."""

from __future__ import annotations

import json

from app.core.config import Settings

SEARCH_PATH = "/api/v1/semantic_search/messages"


def api_base_url(settings: Settings) -> str:
    """Where a local client reaches the configured API (a wildcard bind is reached on loopback)."""
    host = settings.api_host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.api_port}"


def curl_example(token: str, base_url: str) -> str:
    """A search request with the token, ready to paste (search is what every scope may do)."""
    body = json.dumps({"query": "bug fix", "limit": 5})
    return (
        f'curl -H "Authorization: Bearer {token}" -X POST {base_url}{SEARCH_PATH} '
        f"-H 'Content-Type: application/json' -d '{body}'"
    )
