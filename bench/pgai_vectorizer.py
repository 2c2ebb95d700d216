"""The pgai vectorizer worker (PyPI `pgai`) on our own table, stub and database.

pgai runs from its own environment (`uv tool run --from pgai==...`): it pins openai<2 and
click<8.2, below what the app uses, so it cannot share the project's lock. Only what its
OpenAI embedder imports is installed, not its `vectorizer-worker` extra (docling and a CUDA
build of torch, 6 GB). Its bundled tiktoken files are pointed at with TIKTOKEN_CACHE_DIR
(0.12.1 ships them but does not set the variable), so it runs without internet.

The vectorizer writes into `messages.embedding` itself (`ai.destination_column`), loading
`content` (`ai.loading_column`), no chunking, no scheduling, no index: the same job as ours.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import subprocess
import time

import asyncpg

from app.core.errors import ConfigurationError

PGAI_VERSION = "0.12.1"
PGAI_REQUIREMENTS = (
    "ijson>=3.3",
    "tiktoken>=0.7",
    "pgvector>=0.3",
    "filetype==1.2.0",
    "tokenizers",
    "openai>=1.44,<2",
    "numpy",
)


def _uv() -> str:
    uv = os.environ.get("UV") or shutil.which("uv")
    if uv is None:
        raise ConfigurationError("the pgai benchmark runs pgai with uv. Fix: pip install uv")
    return uv


def pgai_command(*args: str, program: str = "pgai") -> list[str]:
    """`program` (pgai, python) inside pgai's own tool environment."""
    command = [_uv(), "tool", "run", "--quiet", "--from", f"pgai=={PGAI_VERSION}"]
    for requirement in PGAI_REQUIREMENTS:
        command += ["--with", requirement]
    return [*command, program, *args]


@functools.cache
def pgai_env() -> dict[str, str]:
    """The worker's environment: the stub's key and pgai's bundled tiktoken files."""
    locate = (
        "import importlib.util, os; "
        "print(os.path.join(importlib.util.find_spec('pgai').submodule_search_locations[0], "
        "'vectorizer', 'tiktoken_cache'))"
    )
    found = subprocess.run(
        pgai_command("-c", locate, program="python"),
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return {
        **os.environ,
        "OPENAI_API_KEY": "bench",
        "TIKTOKEN_CACHE_DIR": found.stdout.strip(),
    }


def install(url: str) -> None:
    """pgai's catalog (schema `ai`) in the database; idempotent."""
    subprocess.run(
        pgai_command("install", "-d", url),
        env=pgai_env(),
        capture_output=True,
        check=True,
        timeout=600,
    )


async def _embedded(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM messages WHERE embedding IS NOT NULL"))


async def vectorize(
    url: str,
    stub_url: str,
    rows: int,
    dims: int,
    *,
    batch_size: int | None = None,
    concurrency: int | None = None,
    timeout: float = 1800.0,
) -> float:
    """Seconds from `create_vectorizer` (which queues every row) to all `rows` embedded.

    The worker is started and registered first, so its start-up (imports) is not timed; it
    polls every second. The vectorizer is dropped afterwards (its trigger would otherwise
    queue our own updates).
    """
    conn = await asyncpg.connect(url)
    worker_args = ["vectorizer", "worker", "-d", url, "--poll-interval", "1s"]
    if concurrency is not None:
        worker_args += ["-c", str(concurrency)]
    worker = subprocess.Popen(
        pgai_command(*worker_args),
        env=pgai_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await conn.execute("DELETE FROM ai.vectorizer_worker_process")
        deadline = time.monotonic() + 120
        while not await conn.fetchval("SELECT count(*) FROM ai.vectorizer_worker_process"):
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the pgai worker did not start (exit {worker.poll()})")
            await asyncio.sleep(0.1)
        processing = "ai.processing_default("
        processing += ", ".join(
            f"{name} => {value}"
            for name, value in (("batch_size", batch_size), ("concurrency", concurrency))
            if value is not None
        )
        processing += ")"
        began = time.perf_counter()
        await conn.execute(
            f"""
            SELECT ai.create_vectorizer(
                'messages'::regclass,
                name => 'bench',
                loading => ai.loading_column('content'),
                destination => ai.destination_column('embedding'),
                embedding => ai.embedding_openai(
                    'text-embedding-3-small', {int(dims)}, base_url => $1),
                chunking => ai.chunking_none(),
                scheduling => ai.scheduling_none(),
                indexing => ai.indexing_none(),
                processing => {processing})
            """,
            stub_url,
        )
        queue = await conn.fetchval(
            "SELECT format('%I.%I', queue_schema, queue_table) FROM ai.vectorizer "
            "WHERE name = 'bench'"
        )
        # Poll pgai's own queue (small), as ours polls its pending-work index; then confirm.
        while await conn.fetchval(f"SELECT count(*) FROM {queue}") or await _embedded(conn) < rows:
            if worker.poll() is not None:
                raise RuntimeError(f"the pgai worker exited ({worker.returncode})")
            if time.perf_counter() - began > timeout:
                raise TimeoutError(f"pgai embedded {await _embedded(conn)} of {rows} rows")
            await asyncio.sleep(0.05)
        return time.perf_counter() - began
    finally:
        worker.terminate()
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        await conn.execute(
            "SELECT ai.drop_vectorizer(id, drop_all => false) FROM ai.vectorizer WHERE name = 'bench'"
        )
        await conn.close()
