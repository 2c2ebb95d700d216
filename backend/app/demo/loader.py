"""Load the shipped demo chat (and generated extra messages) into a database, in bulk."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

DATA_DIR = Path(__file__).parent / "data"


def read_jsonl(name: str) -> list[dict[str, Any]]:
    """Rows of one of the shipped data files."""
    with open(DATA_DIR / name, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_meta() -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((DATA_DIR / "meta.json").read_text(encoding="utf-8"))
    return meta


def _uuid_for(key: str) -> uuid.UUID:
    return uuid.UUID(hashlib.md5(key.encode()).hexdigest())  # noqa: S324 - an id, not security


async def insert_messages(
    conn: AsyncConnection, messages: list[dict[str, Any]]
) -> dict[str, uuid.UUID]:
    """Insert messages (external_id kept); returns external_id -> id."""
    ids = {}
    rows = []
    for message in messages:
        row_id = _uuid_for(f"message:{message['external_id']}")
        ids[message["external_id"]] = row_id
        rows.append(
            {
                "id": row_id,
                "external_id": message["external_id"],
                "author": message["author"],
                "channel": message["channel"],
                "content": message["content"],
                "sent_at": datetime.fromisoformat(str(message["sent_at"])),
                "status": "done" if message.get("extracted") else "pending",
            }
        )
    if rows:
        await conn.execute(
            text(
                "INSERT INTO messages (id, external_id, author, channel, content, sent_at, "
                "extraction_status, extracted_at) VALUES (:id, :external_id, :author, :channel, "
                ":content, :sent_at, :status, CASE WHEN :status = 'done' THEN now() END)"
            ),
            rows,
        )
    return ids


async def insert_knowledge(
    conn: AsyncConnection, message_ids: dict[str, uuid.UUID]
) -> tuple[int, int]:
    """Insert the shipped topics and atoms with their links; returns (topics, atoms)."""
    topics = read_jsonl("topics.jsonl")
    topic_ids = {t["name"]: _uuid_for(f"topic:{t['name']}") for t in topics}
    await conn.execute(
        text("INSERT INTO topics (id, name, description) VALUES (:id, :name, :description)"),
        [
            {"id": topic_ids[t["name"]], "name": t["name"], "description": t.get("description", "")}
            for t in topics
        ],
    )
    atoms = read_jsonl("atoms.jsonl")
    atom_rows, links, topic_links = [], [], []
    for atom in atoms:
        atom_id = _uuid_for(f"atom:{atom['key']}")
        atom_rows.append(
            {
                "id": atom_id,
                "type": atom["type"],
                "title": atom["title"],
                "content": atom["content"],
                "confidence": atom["confidence"],
                "fingerprint": f"demo:{atom['key']}",
            }
        )
        links += [{"a": atom_id, "m": message_ids[m]} for m in atom["source_message_ids"]]
        topic_links.append({"t": topic_ids[atom["topic"]], "a": atom_id})
    await conn.execute(
        text(
            "INSERT INTO atoms (id, type, title, content, confidence, fingerprint) "
            "VALUES (:id, :type, :title, :content, :confidence, :fingerprint)"
        ),
        atom_rows,
    )
    await conn.execute(
        text("INSERT INTO atom_messages (atom_id, message_id) VALUES (:a, :m)"), links
    )
    await conn.execute(
        text("INSERT INTO topic_atoms (topic_id, atom_id) VALUES (:t, :a)"), topic_links
    )
    return len(topics), len(atoms)
