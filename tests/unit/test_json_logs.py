"""LOG_FORMAT=json: one JSON object a line, `extra=` fields kept, secrets masked everywhere,
tracebacks included."""

from __future__ import annotations

import io
import json
import logging

from app.core.log import JsonFormatter, RedactSecrets

TOKEN = "tt_" + "k" * 43


def record_lines(
    *emit: tuple[str, dict[str, object]], exc: BaseException | None = None
) -> list[dict[str, object]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactSecrets())
    logger = logging.getLogger("tests.json_logs")
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    for message, extra in emit:
        logger.info(message, extra=extra)
    if exc is not None:
        try:
            raise exc
        except type(exc):
            logger.exception("failed with Bearer %s", TOKEN)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_record_is_one_json_object_with_its_extra_fields() -> None:
    lines = record_lines(("embedded 25 messages", {"entity": "messages", "rows": 25}))
    assert len(lines) == 1
    line = lines[0]
    assert line["level"] == "INFO" and line["logger"] == "tests.json_logs"
    assert line["message"] == "embedded 25 messages"
    assert line["entity"] == "messages" and line["rows"] == 25
    assert str(line["time"]).endswith("+00:00")


def test_secrets_are_masked_in_messages_and_tracebacks() -> None:
    lines = record_lines(exc=RuntimeError(f"provider said no to {TOKEN} and sk-abcdefghijklmnop"))
    text = json.dumps(lines)
    assert TOKEN not in text and "sk-abcdefghijklmnop" not in text
    assert lines[0]["exc_type"] == "RuntimeError"
    assert "Traceback" in str(lines[0]["exc"])
