"""Offline token counting and truncation (cl100k_base, shipped inside the bpe-openai wheel).

cl100k_base is what OpenAI's embedding models count with. The tokenizer refuses inputs of a
million characters or 200,000 tokens, so long texts are tokenized in pieces cut after
whitespace (where the tokenizer splits anyway): counts stay exact for ordinary text.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

# At most 4 tokens a character (4 UTF-8 bytes), so a piece stays under the 200,000-token guard.
_PIECE_CHARS = 50_000


@lru_cache(maxsize=1)
def _encoding() -> Any:
    import bpe_openai  # imported lazily: loading the vocabulary takes a moment

    return bpe_openai.get_encoding("cl100k_base")


def _pieces(text: str) -> Iterator[str]:
    start = 0
    while len(text) - start > _PIECE_CHARS:
        end = start + _PIECE_CHARS
        cut = max(text.rfind(" ", start, end), text.rfind("\n", start, end))
        end = cut if cut > start else end
        yield text[start:end]
        start = end
    yield text[start:]


def _tokens(text: str, limit: int | None = None) -> list[int]:
    """The token ids of `text`, or of a prefix holding more than `limit` tokens."""
    tokens: list[int] = []
    for piece in _pieces(text):
        tokens.extend(_encoding().encode_ordinary(piece))
        if limit is not None and len(tokens) > limit:
            break
    return tokens


def count_tokens(text: str) -> int:
    """Tokens of `text` as OpenAI's embedding models count them."""
    return len(_tokens(text))


def truncate(text: str, max_tokens: int) -> tuple[str, bool]:
    """`text` cut to at most `max_tokens` tokens at a token boundary; (text, was_truncated)."""
    tokens = _tokens(text, max_tokens)
    if len(tokens) <= max_tokens:
        return text, False
    keep = max(max_tokens, 0)
    while True:
        # A cut inside a multi-byte character leaves a partial one at the end: drop it.
        cut = _encoding().decode_bytes(tokens[:keep]).decode("utf-8", errors="ignore")
        if keep <= 0 or count_tokens(cut) <= max_tokens:
            return cut, True
        keep -= 1
