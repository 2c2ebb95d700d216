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
