"""Which database errors mean "the server is gone for now" (waited out, 503) and which are bugs."""

from __future__ import annotations

import asyncpg

from app.db import is_transient_db_error, lost_mid_operation

# What asyncpg raised at a Postgres restart under load (the fault benchmark's API, a CI run's
# worker): the server's close arrived while the protocol was consuming a message.
LEFT_MID_OPERATION = "cannot switch to state 15; another operation (2) is in progress"


def test_a_protocol_left_mid_operation_by_a_restart_is_a_lost_connection() -> None:
    error = asyncpg.InternalClientError(LEFT_MID_OPERATION)
    assert lost_mid_operation(error)
    assert is_transient_db_error(error)
    wrapped = RuntimeError("a step failed")
    wrapped.__cause__ = error
    assert is_transient_db_error(wrapped)


def test_other_client_errors_stay_bugs() -> None:
    error = asyncpg.InternalClientError("unexpected codec state")
    assert not lost_mid_operation(error)
    assert not is_transient_db_error(error)
    assert not is_transient_db_error(ValueError("no such column"))
