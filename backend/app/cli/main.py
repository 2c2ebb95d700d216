"""The `tasktracker` command line: status, services, worker, backfill, demo, token, index, bench."""

from __future__ import annotations

import typer

from app.cli import backfill, bench, demo, embeddings, index, services, status, token, worker
from app.cli._console import fail
from app.core.config import get_settings
from app.core.errors import AppError
from app.core.log import configure_logging

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


@app.callback()
def _root() -> None:
    """tasktracker: chat messages in, searchable knowledge out."""
    try:
        settings = get_settings()
    except AppError as exc:
        fail(exc.message)
    configure_logging(settings.log_level, settings.log_format)


app.command()(status.status)
app.command()(services.services)
app.command()(worker.worker)
app.command()(backfill.backfill)
app.command()(demo.demo)
app.add_typer(token.token_app, name="token")
app.add_typer(index.index_app, name="index")
app.add_typer(embeddings.embeddings_app, name="embeddings")
bench.register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
