"""The offline extractor on a realistic, bilingual chat sample."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from app.core.enums import AtomType
from app.knowledge.base import Extractor
from app.knowledge.offline_extractor import OfflineExtractor, score_message
from app.knowledge.schemas import ExtractionResult, SourceMessage

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)

SAMPLE = [
    ("m01", "olena", "general", "Доброго ранку всім! ☕"),
    (
        "m02",
        "max",
        "backend",
        "Checkout fails with ERR-502 after the deploy, the payment page crashes.",
    ),
    ("m03", "ivan", "backend", "Бачу те саме: після оновлення оплата не працює, помилка ERR-502."),
    ("m04", "max", "backend", "Turns out the root cause is the new connection pool limit."),
    ("m05", "ivan", "backend", "Fixed it: the hotfix raises the pool size, deployed at 10:40."),
    ("m06", "olena", "backend", "Виправив конфіг на staging теж, ERR-502 більше не бачу."),
    ("m07", "anna", "product", "We decided to ship the new onboarding flow on Monday."),
    ("m08", "taras", "product", "Домовились: реліз мобільного застосунку переносимо на квітень."),
    ("m09", "anna", "product", "Who owns the analytics dashboard now?"),
    ("m10", "taras", "mobile", "Заблоковано: чекаємо на ключі від App Store, без них не релізимо."),
    (
        "m11",
        "max",
        "mobile",
        "There is a risk the old Android clients might break with the new API.",
    ),
    ("m12", "olena", "general", "lol 😂 thanks, have a great weekend everyone"),
    ("m13", "anna", "product", "The export must support CSV and XLSX for enterprise customers."),
    ("m14", "ivan", "general", "Дякую всім, гарних вихідних!"),
]
SMALL_TALK = {"m01", "m12", "m14"}


def _messages() -> list[SourceMessage]:
    return [
        SourceMessage(id=i, author=a, channel=c, content=t, sent_at=T0 + timedelta(minutes=n))
        for n, (i, a, c, t) in enumerate(SAMPLE)
    ]


async def _extract(messages: list[SourceMessage]) -> ExtractionResult:
    return await OfflineExtractor().extract(messages)


def _types_by_message(result: ExtractionResult) -> dict[str, set[AtomType]]:
    found: dict[str, set[AtomType]] = {}
    for atom in result.atoms:
        for source in atom.source_message_ids:
            found.setdefault(source, set()).add(atom.type)
    return found


def test_offline_extractor_is_an_extractor() -> None:
    assert isinstance(OfflineExtractor(), Extractor)
    assert OfflineExtractor.name == "offline"


async def test_sample_yields_many_types_in_both_languages() -> None:
    result = await _extract(_messages())
    by_message = _types_by_message(result)

    assert len({a.type for a in result.atoms}) >= 5
    assert AtomType.problem in by_message["m02"]
    assert AtomType.problem in by_message["m03"]  # Ukrainian
    assert AtomType.insight in by_message["m04"]
    assert AtomType.solution in by_message["m05"]
    assert AtomType.solution in by_message["m06"]  # Ukrainian
    assert AtomType.decision in by_message["m07"]
    assert AtomType.decision in by_message["m08"]  # Ukrainian
    assert AtomType.question in by_message["m09"]
    assert AtomType.blocker in by_message["m10"]  # Ukrainian
    assert AtomType.risk in by_message["m11"]
    assert AtomType.requirement in by_message["m13"]


async def test_small_talk_yields_no_atoms() -> None:
    result = await _extract(_messages())
    assert SMALL_TALK.isdisjoint(_types_by_message(result))
    small_talk = [m for m in _messages() if m.id in SMALL_TALK]
    assert (await _extract(small_talk)).atoms == []
    assert (await _extract(small_talk)).topics == []


async def test_at_most_two_atoms_per_message_with_bounded_confidence() -> None:
    result = await _extract(_messages())
    assert all(len(types) <= 2 for types in _types_by_message(result).values())
    assert all(0.5 <= a.confidence <= 0.8 for a in result.atoms)


async def test_atoms_point_at_inputs_and_topics_cover_atoms() -> None:
    messages = _messages()
    result = await _extract(messages)
    result.validate_against({m.id for m in messages})
    topic_names = {t.name for t in result.topics}
    assert {a.topic for a in result.atoms} <= topic_names
    assert all(len(a.source_message_ids) == 1 for a in result.atoms)


async def test_topics_are_named_by_channel_and_salient_keyword() -> None:
    result = await _extract(_messages())
    backend = next(a.topic for a in result.atoms if a.source_message_ids == ["m02"])
    assert backend == "#backend: ERR-502"
    assert {t.name.split(":")[0] for t in result.topics} == {"#backend", "#product", "#mobile"}


async def test_titles_are_first_sentences_and_content_is_the_message() -> None:
    long_text = "The login page is broken. " + "Details follow here. " * 300
    msg = SourceMessage(id="x", author="a", channel="c", content=f"  {long_text}  ", sent_at=T0)
    (atom,) = (await _extract([msg])).atoms
    assert atom.title == "The login page is broken."
    assert atom.content.startswith("The login page is broken.")
    assert len(atom.content) <= 4000


async def test_same_input_same_output_in_any_order() -> None:
    messages = _messages()
    first = await _extract(messages)
    shuffled = messages[:]
    random.Random(7).shuffle(shuffled)
    assert await _extract(messages) == first
    assert await _extract(shuffled) == first


async def test_empty_window() -> None:
    assert await _extract([]) == ExtractionResult(topics=[], atoms=[])


def test_cues_match_whole_words_case_insensitively() -> None:
    assert AtomType.problem in score_message("BUG in the parser")
    assert AtomType.problem not in score_message("debugging session notes")
    assert AtomType.decision in score_message("Let’s go with Postgres")  # typographic apostrophe
    assert AtomType.problem in score_message("Сервіс ПАДАЄ кожні 5 хвилин")
    assert score_message("Багато людей прийшло") == {}  # "баг" must not match inside a word
    assert AtomType.question not in score_message("ok?")
