"""A small embeddings server on 127.0.0.1 speaking OpenAI's and Ollama's protocols.

    with OpenAIStub(dims=384, api_key="k") as stub:   # in a background thread, free port
        stub.base_url                            # http://127.0.0.1:PORT/v1 (OpenAI /v1/embeddings)
        stub.ollama_url                          # http://127.0.0.1:PORT     (Ollama /api/embed)
        stub.script(429, 500, {"status": 429, "retry_after": 2}, {"hang": 2}, {"dims": 10})
        stub.set_latency(ms=200, jitter_ms=50); stub.set_rate_429(0.1)
        stub.reject_substring("POISON")          # any request holding it gets a 400
        stub.vector("text")                      # the vector the stub returns for a text
        stub.stats(); stub.reset()               # see `stats` for the keys
        stub.set_outage({"status": 503}); stub.set_outage({"hang": True}); stub.set_outage(None)

    uv run python -m testkit.stubs.openai_stub --port 0 --dims 1536 --latency-ms 0 [--api-key K]
        # as a process: prints its base URL on the first stdout line; stops on SIGTERM/Ctrl-C

Scripted steps apply to the next requests, one each: an int status (429 comes with
Retry-After: 1), {"status": s, "retry_after": seconds}, {"hang": seconds} (sleep, then answer:
a client with a shorter timeout gives up), {"dims": n} (answer with n-dimensional vectors),
{"status": s, "message": text} (that status, with `text` as the error body's message).
`stub.authorizations` lists the Authorization header of every request, in order.
Over HTTP: POST /_stub/control with any of {"script": [...], "latency_ms", "jitter_ms",
"rate_429", "reject_substring", "api_key", "clear_script": true, "reset": true, "outage"};
GET /_stub/stats (GET /_stub/stats?brief=1 leaves out text_counts, cheap to poll). Every
request to an embeddings endpoint counts, refused ones too.

An outage lasts until it is ended ({"outage": null}) and applies to every request, after the
script: {"outage": {"status": 503, "retry_after": s}} answers that status at once (retry_after
optional); {"outage": {"hang": true}} answers nothing while the outage lasts (the request is
held; a client with a timeout gives up), then a 503. Requests refused by it count in
`outage_requests`.

Vectors are deterministic per text (a pool of precomputed unit vectors picked by a hash), and
base64 responses are assembled from pre-encoded strings so the stub stays cheap at thousands
of vectors per second.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import random
import signal
import threading
import time
from collections import Counter, deque
from typing import Any

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

POOL = 4096


class _Pool:
    """Precomputed unit vectors (float list and base64) for one dimension."""

    def __init__(self, dims: int):
        rng = np.random.default_rng(dims)
        vectors = rng.standard_normal((POOL, dims)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        self.vectors = vectors
        self.b64 = [base64.b64encode(v.tobytes()).decode() for v in vectors]

    @staticmethod
    def slot(text: str) -> int:
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big") % POOL


class OpenAIStub:
    """The stub server; every knob is thread-safe and also reachable over HTTP."""

    def __init__(self, dims: int = 1536, api_key: str | None = None, port: int = 0):
        self.dims = dims
        self.api_key = api_key
        self._pools: dict[int, _Pool] = {}
        self._lock = threading.Lock()
        self._script: deque[Any] = deque()
        self.latency_ms = 0.0
        self.jitter_ms = 0.0
        self.rate_429 = 0.0
        self.rejected: str | None = None
        self.outage: dict[str, Any] | None = None
        self.reset()
        self._port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    # -- control -----------------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            self.requests = 0
            self.authorizations: list[str | None] = []  # the Authorization header of each request
            self.inputs = 0
            self.text_counts: Counter[str] = Counter()
            self.max_batch = 0
            self.in_flight = 0
            self.max_concurrent = 0
            self.errors_sent = 0
            self.outage_requests = 0

    def script(self, *steps: Any) -> None:
        """Next responses: an int status (429 comes with Retry-After: 1), {"status", "retry_after"}, {"hang": s}, {"dims": n}."""
        with self._lock:
            self._script.extend(steps)

    def set_latency(self, ms: float, jitter_ms: float = 0.0) -> None:
        self.latency_ms, self.jitter_ms = ms, jitter_ms

    def set_rate_429(self, rate: float) -> None:
        self.rate_429 = rate

    def reject_substring(self, text: str | None) -> None:
        self.rejected = text

    def set_outage(self, outage: dict[str, Any] | None) -> None:
        """Every request fails until `set_outage(None)`: {"status": s[, "retry_after": r]} or
        {"hang": True} (held without an answer while the outage lasts, then a 503)."""
        self.outage = outage

    def stats(self) -> dict[str, Any]:
        """requests (all, refused too), inputs (served), text_counts {text: times served},
        max_batch (most inputs in one request), max_concurrent (requests in flight at once),
        errors_sent (error responses)."""
        with self._lock:
            return {
                "requests": self.requests,
                "inputs": self.inputs,
                "text_counts": dict(self.text_counts),
                "max_batch": self.max_batch,
                "max_concurrent": self.max_concurrent,
                "errors_sent": self.errors_sent,
                "outage_requests": self.outage_requests,
                "outage": self.outage is not None,
            }

    def control(self, body: dict[str, Any]) -> None:
        if "script" in body:
            self.script(*body["script"])
        if "latency_ms" in body:
            self.set_latency(body["latency_ms"], body.get("jitter_ms", 0.0))
        if "rate_429" in body:
            self.set_rate_429(body["rate_429"])
        if "reject_substring" in body:
            self.reject_substring(body["reject_substring"])
        if "api_key" in body:
            self.api_key = body["api_key"]
        if body.get("clear_script"):
            with self._lock:
                self._script.clear()
        if body.get("reset"):
            self.reset()
        if "outage" in body:
            self.set_outage(body["outage"])

    # -- serving -----------------------------------------------------------------------
    def pool(self, dims: int) -> _Pool:
        with self._lock:
            if dims not in self._pools:
                self._pools[dims] = _Pool(dims)
            return self._pools[dims]

    def vector(self, text: str, dims: int | None = None) -> np.ndarray:
        """The vector this stub returns for `text`."""
        vector: np.ndarray = self.pool(dims or self.dims).vectors[_Pool.slot(text)]
        return vector

    async def _pre(self, request: Request, inputs: list[str]) -> tuple[Response | None, int]:
        with self._lock:
            self.requests += 1
            self.authorizations.append(request.headers.get("authorization"))
        if self.api_key and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided"), self.dims
        with self._lock:
            step = self._script.popleft() if self._script else None
        dims = self.dims
        if isinstance(step, dict) and "hang" in step:
            await asyncio.sleep(float(step["hang"]))
        elif isinstance(step, dict) and "dims" in step:
            dims = int(step["dims"])
        elif step is not None:
            status = step if isinstance(step, int) else int(step["status"])
            retry_after = None if isinstance(step, int) else step.get("retry_after")
            if status == 429 and retry_after is None:
                retry_after = 1
            message = "scripted failure" if isinstance(step, int) else step.get("message")
            return _error(status, message or "scripted failure", retry_after), dims
        refused = await self._outage_answer()
        if refused is not None:
            return refused, dims
        if self.rate_429 and random.random() < self.rate_429:
            return _error(429, "rate limited", 1), dims
        if self.rejected and any(self.rejected in text for text in inputs):
            return _error(400, "input rejected by the stub"), dims
        delay = self.latency_ms + (
            random.uniform(-self.jitter_ms, self.jitter_ms) if self.jitter_ms else 0.0
        )
        if delay > 0:
            await asyncio.sleep(delay / 1000)
        return None, dims

    async def _outage_answer(self) -> Response | None:
        """The answer of an ongoing outage, or None when there is none."""
        outage = self.outage
        if outage is None:
            return None
        with self._lock:
            self.outage_requests += 1
        if outage.get("hang"):
            # Polled, so a call from another thread (the in-process stub) ends it as well.
            while self.outage is outage:
                await asyncio.sleep(0.05)
            return _error(503, "provider outage (held)")
        return _error(int(outage.get("status", 503)), "provider outage", outage.get("retry_after"))

    def _served(self, inputs: list[str]) -> None:
        with self._lock:
            self.inputs += len(inputs)
            self.max_batch = max(self.max_batch, len(inputs))
            self.text_counts.update(inputs)

    async def _track(self, coro: Any) -> Response:
        with self._lock:
            self.in_flight += 1
            self.max_concurrent = max(self.max_concurrent, self.in_flight)
        try:
            response: Response = await coro
            if response.status_code >= 400:
                with self._lock:
                    self.errors_sent += 1
            return response
        finally:
            with self._lock:
                self.in_flight -= 1

    async def openai_embeddings(self, request: Request) -> Response:
        return await self._track(self._openai(request))

    async def _openai(self, request: Request) -> Response:
        body, inputs = await _parse(request)
        if body is None:
            return _error(400, "the body must be JSON with an 'input'")
        failure, dims = await self._pre(request, inputs)
        if failure is not None:
            return failure
        dims = int(body.get("dimensions") or dims) if dims == self.dims else dims
        pool = self.pool(dims)
        self._served(inputs)
        if body.get("encoding_format") == "base64":
            items = ",".join(
                f'{{"object":"embedding","index":{i},"embedding":"{pool.b64[_Pool.slot(t)]}"}}'
                for i, t in enumerate(inputs)
            )
        else:
            items = ",".join(
                json.dumps(
                    {
                        "object": "embedding",
                        "index": i,
                        "embedding": pool.vectors[_Pool.slot(t)].tolist(),
                    }
                )
                for i, t in enumerate(inputs)
            )
        usage = sum(len(t) // 4 + 1 for t in inputs)
        payload = (
            f'{{"object":"list","data":[{items}],"model":{json.dumps(body.get("model", ""))},'
            f'"usage":{{"prompt_tokens":{usage},"total_tokens":{usage}}}}}'
        )
        return Response(payload, media_type="application/json")

    async def ollama_embed(self, request: Request) -> Response:
        return await self._track(self._ollama(request))

    async def _ollama(self, request: Request) -> Response:
        body, inputs = await _parse(request)
        if body is None:
            return _error(400, "the body must be JSON with an 'input'")
        failure, dims = await self._pre(request, inputs)
        if failure is not None:
            return failure
        pool = self.pool(dims)
        self._served(inputs)
        return JSONResponse(
            {
                "model": body.get("model"),
                "embeddings": [pool.vectors[_Pool.slot(t)].tolist() for t in inputs],
            }
        )

    def app(self) -> Starlette:
        async def control(request: Request) -> Response:
            self.control(await request.json())
            return JSONResponse({"ok": True})

        async def stats(request: Request) -> Response:
            figures = self.stats()
            if request.query_params.get("brief"):
                figures.pop("text_counts")
            return JSONResponse(figures)

        return Starlette(
            routes=[
                Route("/v1/embeddings", self.openai_embeddings, methods=["POST"]),
                Route("/api/embed", self.ollama_embed, methods=["POST"]),
                Route("/_stub/control", control, methods=["POST"]),
                Route("/_stub/stats", stats, methods=["GET"]),
            ]
        )

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.servers[0].sockets[0].getsockname()[1])

    @property
    def ollama_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.ollama_url}/v1"

    def start(self) -> OpenAIStub:
        config = uvicorn.Config(
            self.app(),
            host="127.0.0.1",
            port=self._port,
            log_level="error",
            access_log=False,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("stub did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> OpenAIStub:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


async def _parse(request: Request) -> tuple[dict[str, Any] | None, list[str]]:
    """The JSON body and its inputs as strings (token arrays become their repr)."""
    try:
        body = await request.json()
    except ValueError:
        return None, []
    if not isinstance(body, dict) or "input" not in body:
        return None, []
    raw = body["input"]
    is_token_array = isinstance(raw, list) and bool(raw) and isinstance(raw[0], int)
    items = raw if isinstance(raw, list) and not is_token_array else [raw]
    return body, [item if isinstance(item, str) else str(item) for item in items]


def _error(status: int, message: str, retry_after: float | None = None) -> Response:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    body = {"error": {"message": message, "type": "stub_error", "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def main(stub_class: type[OpenAIStub] | None = None) -> None:
    """Run a stub until interrupted; the first stdout line is its base URL."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--dims", type=int, default=1536)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--rate-429", type=float, default=0.0)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()
    stub = (stub_class or OpenAIStub)(dims=args.dims, api_key=args.api_key, port=args.port)
    stub.set_latency(args.latency_ms, args.jitter_ms)
    stub.set_rate_429(args.rate_429)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stub.start()
    print(stub.base_url, flush=True)  # noqa: T201 - the parent reads the URL from stdout
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stub.stop()


if __name__ == "__main__":
    main()
