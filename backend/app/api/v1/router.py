"""Collects the v1 routers."""

from fastapi import APIRouter

from app.api.v1 import (
    embedding_spaces,
    embeddings,
    health,
    knowledge,
    messages,
    providers,
    semantic_search,
)

api_router = APIRouter()
for module in (
    health,
    semantic_search,
    embeddings,
    embedding_spaces,
    messages,
    providers,
    knowledge,
):
    api_router.include_router(module.router)
