"""The embedded server starts with the project's shared_buffers, and status says whether the HNSW
indexes fit in them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from app.core import pgmemory
from app.core.embedded import SERVER_CONF, EmbeddedPostgres
from app.core.sizes import parse_size
from app.db import alembic
from tests.integration.conftest import cli

ROWS = 300  # an HNSW index over 300 rows x 384 dims is ~700 kB, more than 128kB of buffers


def status(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return cli("status", *args, env={"DATABASE_URL": url}, timeout=120)


def test_shared_buffers_follow_the_setting_and_status_says_when_the_indexes_do_not_fit(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "postgres"
    first = EmbeddedPostgres(folder)  # the default: auto
    first.start()
    try:
        expected = pgmemory.shared_buffers("auto")
        assert expected in first.psql("SHOW shared_buffers")
        assert f"shared_buffers = '{expected}'" in (folder / SERVER_CONF).read_text()
    finally:
        first.stop()

    # A changed setting applies when the server next starts, on the same data folder.
    server = EmbeddedPostgres(folder, delete_on_exit=True, shared_buffers="128kB")
    server.start()
    try:
        assert "128kB" in server.psql("SHOW shared_buffers")
        server.ensure_database("memory")
        url = server.url("memory")
        migrated = alembic(url, "upgrade", "head")
        assert migrated.returncode == 0, migrated.stderr
        report = json.loads(status(url, "--json").stdout)["memory"]
        assert report == {
            "shared_buffers_bytes": parse_size("128kB"),
            "hnsw_index_bytes": report["hnsw_index_bytes"],
            "indexes_fit": True,  # the empty indexes: a few pages
        }
        server.psql(
            "INSERT INTO messages (id, author, channel, content, sent_at, embedding) "
            "SELECT gen_random_uuid(), 'a', 'c', 'message ' || g, now(), "
            "(SELECT array_agg(random())::vector(384) FROM generate_series(1, 384) WHERE g > 0) "
            f"FROM generate_series(1, {ROWS}) g",
            database="memory",
        )
        report = json.loads(status(url, "--json").stdout)["memory"]
        assert report["hnsw_index_bytes"] > parse_size("128kB")
        assert report["indexes_fit"] is False
        shown = status(url)
        assert shown.returncode == 0, shown.stderr
        said = " ".join(shown.stdout.split())
        assert "the indexes do not fit" in said
        assert (
            "Fix: raise shared_buffers above" in said and "EMBEDDED_POSTGRES_SHARED_BUFFERS" in said
        )
    finally:
        server.stop()
    assert not folder.exists()
