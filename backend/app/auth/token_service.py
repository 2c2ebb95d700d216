"""API bearer tokens: shown once in plain text, stored as a SHA-256 hash, checked in constant time.

A token is `tt_` + 32 random bytes (urlsafe base64). Such a secret needs no slow password hash:
nobody can guess it, so a leaked table gives nothing to brute-force. The lookup goes through
the unique index on the hash; the hash found is compared again with `hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app.core.errors import ConflictError, NotFoundError
from app.models.api_token import ApiToken, TokenScope
from app.models.base import utcnow

TOKEN_MARK = "tt_"
PREFIX_LENGTH = 8
# Longer than any token we issue; anything longer is refused before it is hashed.
MAX_TOKEN_LENGTH = 256
# last_used_at is written at most this often per token: one UPDATE a minute, not one a request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class TokenInfo:
    """What may be shown of a token: never the token, never its hash."""

    id: uuid.UUID
    name: str | None
    scope: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiToken) -> TokenInfo:
        return cls(
            id=row.id,
            name=row.name,
            scope=row.scope,
            prefix=row.prefix,
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            revoked_at=row.revoked_at,
        )

    @property
    def display_prefix(self) -> str:
        return f"{TOKEN_MARK}{self.prefix}…"

    def as_dict(self) -> dict[str, object]:
        return {
            key: value.isoformat() if isinstance(value, datetime) else value
            for key, value in {**asdict(self), "id": str(self.id)}.items()
        }


def hash_token(token: str) -> str:
    """SHA-256 hex of the whole token, as stored."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """`tt_` and 43 URL-safe characters, the first a letter or digit: the prefix that names the
    token on the command line (`tasktracker token revoke PREFIX`) never starts with `-`, which
    would be read as an option."""
    while True:
        token = TOKEN_MARK + secrets.token_urlsafe(32)
        if token[len(TOKEN_MARK)].isalnum():
            return token


async def create_token(
    session: AsyncSession, scope: TokenScope, name: str | None = None
) -> tuple[str, ApiToken]:
    """A new token: the plain text (to show once) and its row (flushed, not committed)."""
    token = new_token()
    row = ApiToken(
        name=name,
        scope=scope.value,
        prefix=token[len(TOKEN_MARK) : len(TOKEN_MARK) + PREFIX_LENGTH],
        token_hash=hash_token(token),
        created_at=utcnow(),
    )
    session.add(row)
    await session.flush()
    return token, row


async def list_tokens(session: AsyncSession) -> list[TokenInfo]:
    """Every token, oldest first, revoked ones included."""
    rows = await session.execute(
        select(ApiToken).order_by(col(ApiToken.created_at), col(ApiToken.id))
    )
    return [TokenInfo.of(row) for row in rows.scalars()]


async def _find(session: AsyncSession, ref: str) -> ApiToken:
    """The token an id, a prefix (with or without `tt_`) or the whole token names."""
    try:
        condition = col(ApiToken.id) == uuid.UUID(ref)
    except ValueError:
        base = ref.strip().removeprefix(TOKEN_MARK).rstrip("….")
        if len(base) > PREFIX_LENGTH:
            condition = col(ApiToken.token_hash) == hash_token(TOKEN_MARK + base)
        else:
            condition = col(ApiToken.prefix) == base
    rows = list((await session.execute(select(ApiToken).where(condition))).scalars())
    if not rows:
        raise NotFoundError("no token has that id or prefix. Fix: see `tasktracker token list`.")
    if len(rows) > 1:
        ids = ", ".join(str(row.id) for row in rows)
        raise ConflictError(f"several tokens share that prefix ({ids}). Fix: revoke one by its id.")
    return rows[0]


async def revoke_token(session: AsyncSession, ref: str) -> tuple[TokenInfo, bool]:
    """Revoke the token `ref` names; returns it and whether it was active until now."""
    row = await _find(session, ref)
    was_active = row.revoked_at is None
    if was_active:
        row.revoked_at = utcnow()
        await session.flush()
    return TokenInfo.of(row), was_active


async def authenticate(session: AsyncSession, token: str) -> TokenScope | None:
    """The scope of an active token, or None for an unknown, revoked or malformed one."""
    if not token.startswith(TOKEN_MARK) or len(token) > MAX_TOKEN_LENGTH:
        return None
    digest = hash_token(token)
    found = await session.execute(
        select(
            col(ApiToken.id),
            col(ApiToken.scope),
            col(ApiToken.token_hash),
            col(ApiToken.revoked_at),
            col(ApiToken.last_used_at),
        ).where(col(ApiToken.token_hash) == digest)
    )
    row = found.first()
    if row is None or not hmac.compare_digest(row.token_hash, digest) or row.revoked_at is not None:
        return None
    now = utcnow()
    if row.last_used_at is None or row.last_used_at < now - LAST_USED_RESOLUTION:
        # Conditional, so concurrent requests do not all write the same minute.
        await session.execute(
            update(ApiToken)
            .where(
                col(ApiToken.id) == row.id,
                or_(
                    col(ApiToken.last_used_at).is_(None),
                    col(ApiToken.last_used_at) < now - LAST_USED_RESOLUTION,
                ),
            )
            .values(last_used_at=now)
        )
    return TokenScope(row.scope)
