"""A real HTTP server on 127.0.0.1 speaking OpenAI's chat completions API, scripted from Python.

Usage:
    with ChatStub() as stub:
        stub.enqueue('{"topics": [], "atoms": []}', "not json", HTTPError(401, "bad key"))
        client = openai.AsyncOpenAI(base_url=stub.base_url, api_key="x")

Queued replies are served first, in order; when the queue is empty the `responder` callable
(request JSON -> content string) answers. Every request body is recorded.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

Responder = Callable[[dict[str, Any]], str]

EMPTY_ANSWER = '{"topics": [], "atoms": []}'


@dataclass(frozen=True)
class HTTPError:
    """A scripted error reply: this status with an OpenAI-style error body."""

    status: int
    message: str = "stub error"
    type: str = "invalid_request_error"
    headers: tuple[tuple[str, str], ...] = ()


Reply = str | HTTPError


def _default_responder(_request: dict[str, Any]) -> str:
    return EMPTY_ANSWER


class ChatStub:
    """An OpenAI-compatible chat completions server in a background thread."""

    def __init__(self, responder: Responder = _default_responder) -> None:
        self.responder = responder
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        # A short poll interval keeps shutdown (one per test) fast.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """The base URL to give an OpenAI client (ends in /v1)."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    @property
    def last_request(self) -> dict[str, Any] | None:
        with self._lock:
            return self.requests[-1] if self.requests else None

    def enqueue(self, *replies: Reply) -> None:
        """Serve these replies to the next requests, in order, before falling back to responder."""
        with self._lock:
            self._queue.extend(replies)

    def reset(self) -> None:
        """Forget queued replies and recorded requests."""
        with self._lock:
            self._queue.clear()
            self.requests.clear()
            self.headers.clear()

    def start(self) -> ChatStub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ChatStub:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _record(self, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        """Record a request and pick its reply (queued first, else the responder's)."""
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            queued = self._queue.popleft() if self._queue else None
        return queued if queued is not None else self.responder(body)

    def _completion(self, body: dict[str, Any], content: str) -> dict[str, Any]:
        prompt = sum(len(str(m.get("content", ""))) for m in body.get("messages", [])) // 4
        completion_tokens = len(content) // 4
        return {
            "id": f"chatcmpl-stub-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "stub-model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt + completion_tokens,
            },
        }


def _handler_for(stub: ChatStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(
                    404, {"error": {"message": f"no route {self.path}", "type": "not_found"}}
                )
                return
            try:
                body = json.loads(raw)
            except ValueError:
                self._send(400, {"error": {"message": "body is not JSON", "type": "invalid_json"}})
                return
            reply = stub._record(body, {k.lower(): v for k, v in self.headers.items()})
            if isinstance(reply, HTTPError):
                error = {"message": reply.message, "type": reply.type, "code": None}
                self._send(reply.status, {"error": error}, reply.headers)
            else:
                self._send(200, stub._completion(body, reply))

        def _send(
            self, status: int, payload: dict[str, Any], headers: tuple[tuple[str, str], ...] = ()
        ) -> None:
            data = json.dumps(payload, ensure_ascii=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            """Keep test output quiet."""

    return Handler
