"""`tasktracker token create|list|revoke`: API bearer tokens, shown once and stored hashed."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from app.auth.curl import api_base_url, curl_example
from app.cli._console import check_choice, console, run

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession


# The values of app.models.api_token.TokenScope, spelled out so that `tasktracker --help` does
# not import the models (a second of start-up); tests check the two agree.
SCOPES = ("search", "write", "admin")

token_app = typer.Typer(
    no_args_is_help=True, help="API bearer tokens: create (shown once), list, revoke."
)
T = TypeVar("T")


async def _in_session(work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `work` in one committed session on the configured (or embedded) database."""
    import asyncpg
    from sqlalchemy.exc import ProgrammingError

    from app.core.errors import ConfigurationError
    from app.db import check_database, create_engine, session_factory, session_scope

    engine = create_engine(pool_size=1, max_overflow=0)
    try:
        await check_database(engine)
        async with session_scope(session_factory(engine)) as session:
            return await work(session)
    except ProgrammingError as exc:
        if isinstance(getattr(exc.orig, "__cause__", None), asyncpg.UndefinedTableError):
            raise ConfigurationError(
                "the database has no api_tokens table. Fix: run `uv run alembic upgrade head`."
            ) from None
        raise
    finally:
        await engine.dispose()


@token_app.command("create")
def create(
    scope: Annotated[str, typer.Option(help="search, write or admin (each covers the former).")],
    name: Annotated[str | None, typer.Option(help="What the token is for.")] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print the token alone (for scripts).")
    ] = False,
) -> None:
    """Create a token; it is printed once, with a ready curl line, and stored only as a hash."""

    check_choice("--scope", scope, SCOPES)
    from app.auth import token_service
    from app.core.config import get_settings
    from app.models.api_token import TokenScope

    async def work(session: AsyncSession) -> tuple[str, token_service.TokenInfo]:
        token, row = await token_service.create_token(session, TokenScope(scope), name)
        return token, token_service.TokenInfo.of(row)

    token, info = run(lambda: _in_session(work))
    if quiet:
        sys.stdout.write(token + "\n")
        return
    sys.stdout.write(
        f"created token {info.id} ({info.scope}{', ' + info.name if info.name else ''})\n"
        f"\n  {token}\n\n"
        "Store it now: it is shown once and only its hash is kept. Try it:\n\n"
        f"  {curl_example(token, api_base_url(get_settings()))}\n"
    )


@token_app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Every token: prefix, scope, name, created, last used, revoked (never the token itself)."""
    from rich.table import Table

    from app.auth import token_service

    infos = run(lambda: _in_session(token_service.list_tokens))
    if as_json:
        sys.stdout.write(json.dumps([info.as_dict() for info in infos], indent=2) + "\n")
        return
    # Ids are in --json (and in the message when two prefixes collide); the prefix revokes.
    table = Table(title="API tokens")
    for column in ("prefix", "scope", "name", "created", "last used", "revoked"):
        table.add_column(column, no_wrap=column != "name")
    for info in infos:
        table.add_row(
            info.display_prefix,
            info.scope,
            info.name or "",
            _when(info.created_at),
            _when(info.last_used_at),
            _when(info.revoked_at) if info.revoked_at else "[green]active[/]",
        )
    console.print(table)


def _when(moment: Any) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M")


@token_app.command("revoke")
def revoke(
    ref: Annotated[str, typer.Argument(help="The token's id or prefix (see `token list`).")],
) -> None:
    """Revoke a token: from now on the API answers it with 401."""
    from app.auth import token_service

    info, was_active = run(lambda: _in_session(lambda s: token_service.revoke_token(s, ref)))
    label = f"{info.display_prefix} ({info.scope}{', ' + info.name if info.name else ''})"
    if was_active:
        console.print(f"revoked {label}", highlight=False)
    else:
        console.print(f"{label} was already revoked at {_when(info.revoked_at)}", highlight=False)
