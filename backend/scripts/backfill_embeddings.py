"""Embed every existing Message and Atom that has no current embedding.

    uv run python backend/scripts/backfill_embeddings.py [--dry-run] [--inline] [--wait] ...

A thin caller of `tasktracker backfill` (app.cli.backfill); `--help` lists the options.
"""

from __future__ import annotations

import sys

from app.cli.main import app

if __name__ == "__main__":
    app(["backfill", *sys.argv[1:]], prog_name="backfill_embeddings.py")
