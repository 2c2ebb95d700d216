"""SQLModel tables; importing this package registers all of them on the metadata."""

from app.models.atom import Atom, AtomMessage
from app.models.message import Message
from app.models.provider import LLMProvider
from app.models.topic import Topic, TopicAtom

__all__ = ["Atom", "AtomMessage", "LLMProvider", "Message", "Topic", "TopicAtom"]
