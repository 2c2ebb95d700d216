"""SQLModel tables; importing this package registers all of them on the metadata."""

from app.models.api_token import ApiToken
from app.models.atom import Atom, AtomMessage
from app.models.embedding_space import EmbeddingConfig, EmbeddingSpace
from app.models.message import Message
from app.models.provider import LLMProvider
from app.models.topic import Topic, TopicAtom

__all__ = [
    "ApiToken",
    "Atom",
    "AtomMessage",
    "EmbeddingConfig",
    "EmbeddingSpace",
    "LLMProvider",
    "Message",
    "Topic",
    "TopicAtom",
]
