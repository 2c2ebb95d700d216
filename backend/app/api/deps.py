"""FastAPI dependencies: the app state, one session per request, the rate limits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.limits import RateLimited, RouteGroup, caller_of
from app.api.state import AppState
from app.models.api_token import TokenScope


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.tt
    return state


async def get_session(
    state: Annotated[AppState, Depends(get_state)],
) -> AsyncIterator[AsyncSession]:
    """One session per request. Routes commit explicitly; this only rolls back and closes."""
    async with state.sessions() as session:
        try:
            yield session
        finally:
            await session.rollback()


async def get_search_session(
    state: Annotated[AppState, Depends(get_state)],
) -> AsyncIterator[AsyncSession]:
    """A session for the search routes: on the read replica while it serves, else on the
    primary's search pool. Its connections start with a vector search's index-only plans
    (app.db.INDEX_PLANS): not a session for other reads."""
    async with state.reads.session() as session:
        try:
            yield session
        finally:
            await session.rollback()


StateDep = Annotated[AppState, Depends(get_state)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
SearchSessionDep = Annotated[AsyncSession, Depends(get_search_session)]


def rate_limit(group: RouteGroup, access: Any) -> Any:
    """A route dependency taking one of the caller's tokens for `group` once `access` admitted it.

    `access` is the route's auth dependency (e.g. SearchAccess): FastAPI runs it once per
    request and before this one, so unauthenticated requests get their 401 and fill no bucket.
    """

    async def check(request: Request, _granted: TokenScope = access) -> None:
        state = get_state(request)
        wait = state.limiter.acquire(group, caller_of(request))
        if wait > 0:
            raise RateLimited(group, state.limiter.per_minute[group], wait)

    check.__name__ = f"rate_limit_{group.value}"
    return Depends(check)
