"""FastAPI dependencies: the app state and one session per request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.state import AppState


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


async def get_read_session(
    state: Annotated[AppState, Depends(get_state)],
) -> AsyncIterator[AsyncSession]:
    """A session for read-only routes: on the read replica while it serves, else the primary."""
    async with state.reads.session() as session:
        try:
            yield session
        finally:
            await session.rollback()


StateDep = Annotated[AppState, Depends(get_state)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session)]
