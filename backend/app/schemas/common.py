"""Validation shared by request models."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr


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


# asyncpg writes Python's first and last microsecond as PostgreSQL's -infinity and infinity,
# and reads those back as naive datetimes: the range keeps one second clear of either end.
EARLIEST = datetime(1, 1, 1, 0, 0, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
OUT_OF_RANGE = "must be between 0001-01-01T00:00:01Z and 9999-12-31T23:59:59Z in UTC"


def _bounded_datetime(value: datetime) -> datetime:
    # Python's datetime ends at years 1 and 9999: an offset that crosses either end cannot be
    # turned into UTC (asyncpg's first step), so such a value is the client's error, not ours.
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    try:
        utc = aware.astimezone(UTC)
    except OverflowError:
        raise ValueError(OUT_OF_RANGE) from None
    if not EARLIEST <= utc <= LATEST:
        raise ValueError(OUT_OF_RANGE)
    return utc


# A moment that PostgreSQL and Python can both hold; without an offset it is taken as UTC.
BoundedDatetime = Annotated[
    datetime,
    AfterValidator(_bounded_datetime),
    Field(description=f"ISO 8601; {OUT_OF_RANGE.removeprefix('must be ')}; no offset means UTC."),
]


def _not_null(value: object) -> object:
    if value is None:
        raise ValueError("may not be null: leave the field out to keep its value")
    return value


def _without_null(schema: dict[str, Any]) -> None:
    options = [option for option in schema.get("anyOf", []) if option.get("type") != "null"]
    if "anyOf" in schema and len(options) == 1:
        del schema["anyOf"]
        schema.update(options[0])


T = TypeVar("T")
# A PATCH field over a required column: it may be left out (None then means "not given", and
# routes read `model_dump(exclude_unset=True)`), but an explicit null is refused, naming it.
Omittable = Annotated[T | None, BeforeValidator(_not_null), Field(json_schema_extra=_without_null)]


def _header_safe(value: SecretStr) -> SecretStr:
    secret = value.get_secret_value()
    if not (secret.isascii() and secret.isprintable()) or secret != secret.strip():
        raise ValueError(
            "must be printable ASCII without surrounding spaces (it is sent in a header)"
        )
    return value


# An API key travels in an Authorization header, which carries ASCII only.
HeaderSecret = Annotated[SecretStr, AfterValidator(_header_safe)]
