"""Offline token counting and truncation (cl100k_base, shipped inside the bpe-openai wheel)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _encoding() -> Any:
    import bpe_openai

    return bpe_openai.get_encoding("cl100k_base")


def count_tokens(text: str) -> int:
    """Tokens of `text` as OpenAI's embedding models count them."""
    return len(_encoding().encode_ordinary(text))


def truncate(text: str, max_tokens: int) -> tuple[str, bool]:
    """`text` cut to at most `max_tokens` tokens at a token boundary; (text, was_truncated)."""
    tokens = _encoding().encode_ordinary(text)
    if len(tokens) <= max_tokens:
        return text, False
    return _encoding().decode(tokens[:max_tokens]), True
