"""Memory sizes as Postgres writes them ('512MB', '2GB', a bare number in kB) and for people."""

from __future__ import annotations

import math
import re

from app.core.errors import ConfigurationError

_UNITS = {"kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}
SIZE = re.compile(r"^\s*(\d+)\s*(kb|mb|gb|tb)?\s*$", re.IGNORECASE)


def parse_size(value: str) -> int:
    """'1GB' / '512MB' / '65536kB' (Postgres memory units; a bare number is kB) -> bytes."""
    match = SIZE.match(value)
    if match is None:
        raise ConfigurationError(
            f"cannot read the memory size {value!r}. Fix: write it as Postgres does, e.g. 512MB or 2GB."
        )
    number, unit = match.groups()
    return int(number) * _UNITS[(unit or "kb").lower()]


def format_size(size: int) -> str:
    """Bytes -> the largest whole Postgres unit that keeps it readable ('1536MB', '2GB')."""
    for unit in ("TB", "GB", "MB"):
        factor = _UNITS[unit.lower()]
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    if size >= _UNITS["mb"]:
        return f"{math.ceil(size / _UNITS['mb'])}MB"
    return f"{math.ceil(size / 1024)}kB"


def human(size: int) -> str:
    """Bytes for a person: '2.1 GB', '640 MB', '48 kB'."""
    if size >= _UNITS["gb"]:
        return f"{size / _UNITS['gb']:.1f} GB"
    if size >= _UNITS["mb"]:
        return f"{size / _UNITS['mb']:.0f} MB"
    return f"{math.ceil(size / 1024)} kB"
