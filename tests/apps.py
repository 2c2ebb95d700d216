"""The app in-process, as the integration tests open it: settings on the OpenAI-compatible stub,
the state the lifespan would set (so a test owns its engine), and bearer tokens."""

from __future__ import annotations

import asyncio
import io
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI

from app.api.state import AppState
from app.auth import token_service
from app.core.config import Settings
from app.core.embedded import free_port
from app.main import create_app
from app.models.api_token import TokenScope
from testkit.stubs.openai_stub import OpenAIStub


def stub_settings(
    url: str, stub: OpenAIStub, nats_url: str, *, key: str, stream: str, **extra: object
) -> Settings:
    """Settings on database `url`, a stream of its own, and the stub's 384-dim model."""
    return Settings(
        database_url=url,
        nats_url=nats_url,
        nats_stream=f"{stream}{uuid.uuid4().hex[:8]}",
        embedding_provider="openai",
        embedding_model="text-embedding-3-small",
        embedding_base_url=stub.base_url,
        embedding_api_key=key,  # type: ignore[arg-type]
        embedding_dimensions=384,
        **extra,  # type: ignore[arg-type]
    )


def app_with_state(settings: Settings) -> tuple[FastAPI, AppState]:
    """The app and its state, set by hand (the lifespan's job): the test closes the state."""
    app = create_app(settings)
    state = AppState(settings)
    app.state.tt = state
    return app, state


async def mint_token(state: AppState, scope: TokenScope, name: str) -> str:
    """A new bearer token of `scope`, committed."""
    async with state.sessions() as session:
        token, _ = await token_service.create_token(session, scope, name)
        await session.commit()
    return token


@dataclass
class Served:
    """An app behind a real uvicorn on a free port, in a thread with its own event loop."""

    url: str
    server: uvicorn.Server
    loop: asyncio.AbstractEventLoop

    def tasks(self) -> str:
        """The stacks of the server's asyncio tasks: where a request that does not answer waits."""

        async def dump() -> str:
            out = io.StringIO()
            for task in asyncio.all_tasks():
                print(f"--- {task.get_name()}: {task.get_coro()}", file=out)
                task.print_stack(limit=30, file=out)
            return out.getvalue()

        return asyncio.run_coroutine_threadsafe(dump(), self.loop).result(10)


@contextmanager
def served(app: FastAPI, timeout: float = 60.0) -> Iterator[Served]:
    """Serve `app` (its lifespan runs) until the block ends."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    loops: list[asyncio.AbstractEventLoop] = []

    async def serve() -> None:
        loops.append(asyncio.get_running_loop())
        await server.serve()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield Served(f"http://127.0.0.1:{port}", server, loops[0])
    finally:
        server.should_exit = True
        thread.join(timeout)
        assert not thread.is_alive(), "uvicorn did not stop"
