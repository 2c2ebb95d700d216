"""Request limits: the body size (an ASGI middleware) and rate limits on the expensive routes.

A body whose Content-Length is over MAX_BODY_BYTES is refused before any route runs; a body
sent without one (chunked) is counted as it arrives and refused once the count passes the
limit, so no more than the limit and one chunk is ever held.

Rate limits are token buckets per (caller, route group): a caller may send up to N requests of
a group at once, and N a minute after that. The caller is the bearer token (by its hash), or,
with auth off, the client address. The buckets live in this process: N API processes admit up
to N times as much.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.config import Settings
from app.schemas.errors import error_responses

if TYPE_CHECKING:
    from starlette.types import Message


class BodyTooLarge(HTTPException):
    """413. A FastAPI HTTPException, so FastAPI's body parsing passes it on to our handler."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            413,
            f"request body larger than {max_bytes} bytes (MAX_BODY_BYTES); "
            "send less, e.g. a smaller batch",
        )
        self.max_bytes = max_bytes

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"error": self.detail, "detail": {"max_bytes": self.max_bytes}}, status_code=413
        )


class BodySizeLimit:
    """ASGI middleware: 413 for a request body over `max_bytes`, without reading it whole."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await BodyTooLarge(self.max_bytes).response()(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed one before we see it
    return None


RATE_LIMIT_RESPONSES = error_responses(429)


class RouteGroup(StrEnum):
    search = "search"
    embed_now = "embed_now"
    extract = "extract"


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """Token buckets per (caller, group): up to `per_minute` at once, refilled at that rate."""

    def __init__(
        self,
        per_minute: Mapping[RouteGroup, int],
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = 10_000,
    ) -> None:
        self.per_minute = dict(per_minute)
        self.clock = clock
        self.max_buckets = max_buckets
        self._buckets: dict[tuple[str, RouteGroup], _Bucket] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        return cls(
            {
                RouteGroup.search: settings.rate_limit_search_per_minute,
                RouteGroup.embed_now: settings.rate_limit_embed_now_per_minute,
                RouteGroup.extract: settings.rate_limit_extract_per_minute,
            }
        )

    def acquire(self, group: RouteGroup, caller: str) -> float:
        """Take a token: 0.0 when admitted, else the seconds until the caller has one again."""
        limit = self.per_minute.get(group, 0)
        if limit <= 0:
            return 0.0
        rate = limit / 60.0
        now = self.clock()
        bucket = self._buckets.get((caller, group))
        if bucket is None:
            if len(self._buckets) >= self.max_buckets:
                self._forget_full(now)
            bucket = self._buckets[(caller, group)] = _Bucket(float(limit), now)
        bucket.tokens = min(float(limit), bucket.tokens + (now - bucket.at) * rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled: forgetting them changes nothing for their caller."""
        for key, bucket in list(self._buckets.items()):
            limit = self.per_minute.get(key[1], 0)
            if limit <= 0 or bucket.tokens + (now - bucket.at) * limit / 60.0 >= limit:
                del self._buckets[key]


class RateLimited(Exception):
    """429 for a caller past its rate for a route group; app.api.errors renders it."""

    def __init__(self, group: RouteGroup, per_minute: int, retry_after: float) -> None:
        self.group = group
        self.per_minute = per_minute
        self.retry_after = max(1, math.ceil(retry_after))
        super().__init__(
            f"rate limit exceeded: {per_minute} {group.value} requests a minute per token; "
            f"retry in {self.retry_after} s"
        )


def caller_of(request: Request) -> str:
    """Whom a request counts against: the token app.auth.dependencies admitted, else the client address."""
    caller = getattr(request.state, "caller", None)
    if isinstance(caller, str):
        return caller
    return f"address:{request.client.host if request.client else 'unknown'}"
