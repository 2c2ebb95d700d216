"""Collects the v1 routers."""

from fastapi import APIRouter

from app.api import health
from app.embedding import provider_routes as providers
from app.embedding import routes as embeddings
from app.knowledge import routes as knowledge
from app.messages import routes as messages
from app.search import routes as semantic_search

api_router = APIRouter()
for module in (health, semantic_search, embeddings, messages, providers, knowledge):
    api_router.include_router(module.router)
