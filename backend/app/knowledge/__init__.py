"""Knowledge extraction: an LLM extractor and an offline, heuristic one behind one protocol."""

from __future__ import annotations

from app.core.config import Settings
from app.knowledge.base import ExtractionError, Extractor

__all__ = ["ExtractionError", "Extractor", "build_extractor"]


def build_extractor(settings: Settings) -> Extractor:
    """The LLM extractor when CHAT_MODEL is set, the offline heuristic extractor otherwise."""
    if settings.chat_model is None:
        from app.knowledge.offline_extractor import OfflineExtractor

        return OfflineExtractor()
    # Imported here so the offline path never loads the OpenAI SDK.
    from app.knowledge.llm_extractor import LLMExtractor

    return LLMExtractor(
        settings.chat_model,
        settings.chat_base_url,
        settings.chat_api_key.get_secret_value() if settings.chat_api_key else None,
    )
