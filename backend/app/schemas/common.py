"""Validation shared by request models."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def _clean_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    if not value.strip():
        raise ValueError("must not be empty or whitespace only")
    return value


CleanText = Annotated[str, AfterValidator(_clean_text)]


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    return value


# Postgres cannot store NUL in text: such input is the client's error, not ours.
NoNul = Annotated[str, AfterValidator(_no_nul)]
