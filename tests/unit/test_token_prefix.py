"""A token's prefix can be typed as an argument: it never starts with `-` (typer reads an option)."""

from __future__ import annotations

import re

from app.auth.token_service import new_token

DRAWS = 2000  # token_urlsafe alone starts with - or _ once in 32 draws: ~60 of these would be


def test_no_prefix_starts_with_a_dash_or_an_underscore() -> None:
    tokens = [new_token() for _ in range(DRAWS)]
    assert all(re.fullmatch(r"tt_[A-Za-z0-9][A-Za-z0-9_-]{42}", token) for token in tokens)
    assert len(set(tokens)) == DRAWS
