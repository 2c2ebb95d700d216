"""The console's search box: the API's search (same validation, same service), as a page."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError as PydanticValidationError

from app.api.state import AppState
from app.core.errors import AppError
from app.core.metrics import observe_search
from app.embedding.entities import ATOMS, MESSAGES, Entity
from app.embedding.registry import EmbeddingRegistry
from app.search import semantic_search_service as search
from app.search.schemas import AtomSearchRequest, MessageSearchRequest


@dataclass
class SearchForm:
    """The search box's fields, as typed (so the page shows them back)."""

    entity: str = "messages"
    q: str = ""
    mode: str = "vector"
    channel: str = ""
    author: str = ""
    types: list[str] = field(default_factory=list)
    limit: int = 10
    similar: str = ""

    @classmethod
    def of(cls, params: Mapping[str, str], types: list[str]) -> SearchForm:
        limit = params.get("limit", "10")
        return cls(
            entity="atoms" if params.get("entity") == "atoms" else "messages",
            q=params.get("q", "").strip(),
            mode="hybrid" if params.get("mode") == "hybrid" else "vector",
            channel=params.get("channel", "").strip(),
            author=params.get("author", "").strip(),
            types=types,
            limit=int(limit) if limit.isdigit() else 10,
            similar=params.get("similar", "").strip(),
        )

    @property
    def asked(self) -> bool:
        return bool(self.q or self.similar)


@dataclass
class SearchView:
    form: SearchForm
    hits: list[search.SearchHit] = field(default_factory=list)
    not_embedded: int = 0
    took_ms: float | None = None
    error: str | None = None
    status_code: int = 200


async def run(state: AppState, registry: EmbeddingRegistry, form: SearchForm) -> SearchView:
    """Search as the API does; a bad field or a provider failure becomes the page's error."""
    view = SearchView(form)
    if not form.asked:
        return view
    entity = ATOMS if form.entity == "atoms" else MESSAGES
    started = time.perf_counter()
    try:
        page = await (
            _similar(state, registry, entity, form)
            if form.similar
            else _query(state, registry, entity, form)
        )
    except PydanticValidationError as exc:
        view.error = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        view.status_code = 422
        return view
    except AppError as exc:
        view.error, view.status_code = exc.message, exc.status_code
        return view
    view.hits, view.not_embedded = page.hits, page.not_embedded
    view.took_ms = round((time.perf_counter() - started) * 1000, 1)
    return view


def _request(entity: Entity, form: SearchForm) -> MessageSearchRequest | AtomSearchRequest:
    common: dict[str, Any] = {"query": form.q, "mode": form.mode, "limit": form.limit}
    if entity is ATOMS:
        return AtomSearchRequest(**common, types=form.types)
    return MessageSearchRequest(**common, channel=form.channel or None, author=form.author or None)


async def _query(
    state: AppState, registry: EmbeddingRegistry, entity: Entity, form: SearchForm
) -> search.SearchPage:
    body = _request(entity, form)
    if isinstance(body, AtomSearchRequest):
        filters = search.SearchFilters(atom_types=tuple(t.value for t in body.types))
    else:
        filters = search.SearchFilters(channel=body.channel, author=body.author)
    query = search.TextQuery(body.query, body.limit, filters=filters, mode=body.mode)
    with observe_search(entity.name, body.mode):
        async with state.reads.session() as session:
            tuning = search.SearchTuning.from_settings(state.settings)
            page = await search.search_text(session, registry, entity, query, tuning)
            await session.commit()
    return page


async def _similar(
    state: AppState, registry: EmbeddingRegistry, entity: Entity, form: SearchForm
) -> search.SearchPage:
    try:
        row_id = uuid.UUID(form.similar)
    except ValueError:
        raise AppError(f"similar: {form.similar!r} is not an id", status_code=422) from None
    with observe_search(entity.name, "similar"):
        async with state.reads.session() as session:
            tuning = search.SearchTuning.from_settings(state.settings)
            limit = max(1, min(form.limit, 100))
            page = await search.similar_to(
                session,
                entity,
                row_id,
                limit=limit,
                threshold=None,
                tuning=tuning,
                registry=registry,
            )
            await session.commit()
    return page
