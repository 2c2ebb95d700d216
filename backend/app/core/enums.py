"""Enumerations shared by models, schemas and services."""

from __future__ import annotations

from enum import StrEnum


class AtomType(StrEnum):
    problem = "problem"
    solution = "solution"
    decision = "decision"
    question = "question"
    insight = "insight"
    idea = "idea"
    blocker = "blocker"
    risk = "risk"
    requirement = "requirement"


class ExtractionStatus(StrEnum):
    pending = "pending"
    processing = "processing"
    done = "done"
    failed = "failed"


class ProviderType(StrEnum):
    openai = "openai"
    ollama = "ollama"
    local = "local"
