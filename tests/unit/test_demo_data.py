"""The shipped demo chat has the shape the demo and the tests rely on."""

from __future__ import annotations

import re
from datetime import datetime

from app.core.enums import AtomType
from app.demo.generate import generate_messages
from app.demo.loader import read_jsonl, read_meta


def test_counts_and_integrity() -> None:
    messages, atoms, topics = (
        read_jsonl("messages.jsonl"),
        read_jsonl("atoms.jsonl"),
        read_jsonl("topics.jsonl"),
    )
    incoming = read_jsonl("incoming.jsonl")
    assert (len(messages), len(atoms), len(incoming)) == (237, 125, 10)
    assert sum(not m["extracted"] for m in messages) == 12
    ids = {m["external_id"] for m in messages}
    assert len(ids) == 237 and not ids & {m["external_id"] for m in incoming}
    extracted = {m["external_id"] for m in messages if m["extracted"]}
    names = {t["name"] for t in topics}
    for atom in atoms:
        assert set(atom["source_message_ids"]) <= extracted
        assert atom["topic"] in names and 0 <= atom["confidence"] <= 1
    assert {a["type"] for a in atoms} == {t.value for t in AtomType}
    assert {"backend", "frontend", "devops", "product", "support"} <= {
        m["channel"] for m in messages
    }
    assert all(datetime.fromisoformat(m["sent_at"]).tzinfo for m in messages)


def test_languages_and_the_exact_code() -> None:
    messages = read_jsonl("messages.jsonl")
    ukrainian = sum(bool(re.search("[а-яіїєґ]", m["content"].lower())) for m in messages)
    assert 0.2 <= ukrainian / len(messages) <= 0.45
    meta = read_meta()
    holders = [m["external_id"] for m in messages if meta["exact_code"] in m["content"]]
    assert holders == [meta["exact_code_message"]]


def test_generator_is_deterministic_and_varied() -> None:
    first = list(generate_messages(5000, seed=3))
    assert first == list(generate_messages(5000, seed=3))
    assert len({m["content"] for m in first}) / len(first) >= 0.95
    assert {"external_id", "author", "channel", "sent_at", "content", "extracted"} == set(first[0])
