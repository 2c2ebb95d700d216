"""An offline knowledge extractor: keyword heuristics, no model, no network.

What it is: each message is scored against lists of cue phrases per atom type, in English and
Ukrainian (whole words, case-insensitive; a trailing `*` in a cue matches any word ending, which
covers some Ukrainian inflection). A question needs a "?" and an interrogative word. A message
yields an atom of its best-scoring type, and a second atom only when another type also has a
strong cue; confidence grows with the cue score from 0.5 to 0.8. The title is the message's first
sentence, the content is the message. Topics are one per channel, named after the channel and a
salient keyword: the most common ticket id or error code, else the most common content word.

What it is not: it does not understand the text. It misses knowledge phrased without cue words,
cannot tell a negated cue ("not blocked") or a small-talk question from a real one, does not merge
a problem with its later solution, and its topics are coarse. It exists so the pipeline works
without a chat model, deterministically: the same messages always give the same result,
whatever order they come in (they are processed by `sent_at`, then `id`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from app.core.enums import AtomType
from app.knowledge.schemas import ExtractedAtom, ExtractedTopic, ExtractionResult, SourceMessage

# Cue phrases per type with a weight: 2 for phrases that rarely mean anything else, 1 for hints.
CUES: dict[AtomType, tuple[tuple[str, int], ...]] = {
    AtomType.blocker: (
        ("blocked", 2), ("blocker", 2), ("blocking", 2), ("waiting on", 2), ("waiting for", 1),
        ("can't proceed", 2), ("cannot proceed", 2),
        ("заблоков*", 2), ("блокер", 2), ("блокує", 2), ("чекаємо", 1),
    ),
    AtomType.solution: (
        ("fixed", 2), ("fix is", 2), ("hotfix*", 2), ("resolved", 2), ("workaround", 2),
        ("patched", 2),
        ("виправив", 2), ("виправила", 2), ("виправили", 2), ("виправлено", 2),
        ("пофіксив", 2), ("пофіксила", 2), ("пофіксили", 2), ("рішення", 1),
    ),
    AtomType.problem: (
        ("bug", 1), ("bugs", 1), ("error", 1), ("errors", 1), ("exception", 1), ("fail", 1),
        ("fails", 1), ("failed", 1), ("failing", 1), ("broken", 2), ("crash*", 2),
        ("doesn't work", 2), ("does not work", 2), ("not working", 2),
        ("помилк*", 1), ("баг", 1), ("баги", 1), ("багу", 1), ("не працює", 2), ("падає", 2),
        ("зламал*", 2),
    ),
    AtomType.decision: (
        ("we decided", 2), ("decided", 1), ("decision", 1), ("let's go with", 2),
        ("we'll go with", 2), ("agreed", 2),
        ("вирішили", 2), ("домовились", 2), ("домовилися", 2),
    ),
    AtomType.risk: (
        ("risk", 2), ("risks", 2), ("risky", 2), ("might break", 2), ("could break", 2),
        ("may break", 2), ("ризик*", 2), ("може злама*", 2),
    ),
    AtomType.requirement: (
        ("must", 1), ("should support", 2), ("must support", 2), ("requirement*", 2),
        ("has to", 1), ("needs to support", 2),
        ("має підтримувати", 2), ("потрібно", 1), ("повинен", 1), ("повинна", 1),
        ("повинні", 1), ("вимог*", 2),
    ),
    AtomType.insight: (
        ("turns out", 2), ("turned out", 2), ("til", 2), ("learned", 1), ("learnt", 1),
        ("root cause", 2), ("виявилось", 2), ("виявилося", 2),
    ),
    AtomType.idea: (
        ("what if", 2), ("idea", 1), ("could we", 2), ("how about", 2), ("maybe we could", 2),
        ("ідея", 1), ("ідею", 1), ("ідеї", 1), ("а що якщо", 2), ("може варто", 2),
        ("пропоную", 2),
    ),
}  # fmt: skip

# Words that make a sentence ending in "?" a question.
INTERROGATIVES = frozenset(
    "what why how when where who which whose is are can could should does do did will would "
    "anyone any що чому як коли де хто який яка яке які чи навіщо скільки куди звідки хтось".split()
)

# Ties between types break in this order (earlier wins).
PRIORITY: tuple[AtomType, ...] = (*CUES, AtomType.question)

STRONG = 2  # the score a second type needs to yield a second atom from the same message
TITLE_LENGTH = 100
CONTENT_LENGTH = 4000
TOPIC_NAME_LENGTH = 120

STOPWORDS = frozenset(
    """
    about after again also because been before being could does doing done each everyone from
    going good have here into it's just know let's like look looks made make many maybe more
    morning most much need only other over please really right said same seems should since
    some still sure team than thank thanks that their them then there these they think this
    those today tomorrow very want well were what when where which while will with would yeah
    yesterday your we're don't can't
    буде було були вже всім всіх дуже добре доброго дякую його зараз завтра зробити коли
    можна може мене мені наша наше наші немає після перед поки привіт просто сьогодні також
    тепер тобі тоді тому треба через цього цьому щоби якщо який яка яке які вчора гаразд ранку
    """.split()
)

_WORD = re.compile(r"\w+(?:'\w+)?")
_CODE = re.compile(
    r"\b(?:[A-Z][A-Z0-9]{1,9}-\d+|[A-Z][A-Za-z]+(?:Error|Exception)|E\d{3,}|[45]\d\d)\b"
)
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|\n+")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u02bc": "'", "`": "'"})


def _cue_pattern(cue: str) -> re.Pattern[str]:
    """A whole-word, case-insensitive pattern; words are separated by any whitespace."""
    stem = cue.endswith("*")
    body = r"\s+".join(re.escape(word) for word in cue.rstrip("*").split())
    tail = r"\w*" if stem else ""
    return re.compile(rf"(?<!\w){body}{tail}(?!\w)", re.IGNORECASE)


_PATTERNS: dict[AtomType, tuple[tuple[re.Pattern[str], int], ...]] = {
    atom_type: tuple((_cue_pattern(cue), weight) for cue, weight in cues)
    for atom_type, cues in CUES.items()
}


@dataclass(frozen=True)
class Finding:
    """A message classified as one atom type with its cue score."""

    message: SourceMessage
    type: AtomType
    score: int


class OfflineExtractor:
    """Deterministic cue-phrase extractor (English and Ukrainian) for use without a chat model."""

    name = "offline"

    async def extract(self, messages: Sequence[SourceMessage]) -> ExtractionResult:
        """Extract topics and atoms with keyword heuristics; never fails on well-formed input."""
        return extract_offline(messages)


def extract_offline(messages: Sequence[SourceMessage]) -> ExtractionResult:
    """The synchronous core of OfflineExtractor.extract."""
    ordered = sorted(messages, key=lambda m: (m.sent_at, m.id))
    found = [f for m in ordered for f in classify(m)]
    topics = _topics(found)
    atoms = [_atom(f, topics[_channel(f.message)].name) for f in found]
    result = ExtractionResult(topics=list(topics.values()), atoms=atoms)
    return result.validate_against({m.id for m in messages})


def score_message(text: str) -> dict[AtomType, int]:
    """The cue score of each atom type that has at least one cue in `text`."""
    text = text.translate(_APOSTROPHES)
    scores: dict[AtomType, int] = {}
    for atom_type, patterns in _PATTERNS.items():
        score = sum(weight for pattern, weight in patterns if pattern.search(text))
        if score:
            scores[atom_type] = score
    question = _question_score(text)
    if question:
        scores[AtomType.question] = question
    return scores


def classify(message: SourceMessage) -> list[Finding]:
    """The best type of a message, plus a second one when it also has a strong cue."""
    scores = score_message(message.content)
    ranked = sorted(scores, key=lambda t: (-scores[t], PRIORITY.index(t)))
    chosen = ranked[:1] + [t for t in ranked[1:2] if scores[t] >= STRONG]
    return [Finding(message, t, scores[t]) for t in chosen]


def _question_score(text: str) -> int:
    """2 when a sentence ending in "?" starts with an interrogative, 1 when it only contains one."""
    best = 0
    for sentence in _sentences(text):
        if not sentence.endswith("?"):
            continue
        words = [w.lower() for w in _WORD.findall(sentence)]
        if words and words[0] in INTERROGATIVES:
            return 2
        if INTERROGATIVES.intersection(words):
            best = 1
    return best


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _atom(found: Finding, topic: str) -> ExtractedAtom:
    content = found.message.content.strip()
    return ExtractedAtom(
        type=found.type,
        title=_title(content),
        content=_clip(content, CONTENT_LENGTH),
        confidence=round(min(0.8, 0.4 + 0.1 * found.score), 2),
        topic=topic,
        source_message_ids=[found.message.id],
    )


def _title(content: str) -> str:
    first = " ".join(_sentences(content)[0].split())
    return _clip(first, TITLE_LENGTH)


def _clip(text: str, limit: int) -> str:
    """`text` cut at a word boundary to at most `limit` characters, marked with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut[limit // 2 :]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip() + "…"


def _channel(message: SourceMessage) -> str:
    return message.channel.strip().lstrip("#") or "general"


def _topics(found: Sequence[Finding]) -> dict[str, ExtractedTopic]:
    """One topic per channel that yielded atoms, keyed by channel, in order of first atom."""
    by_channel: dict[str, list[Finding]] = {}
    for f in found:
        by_channel.setdefault(_channel(f.message), []).append(f)
    return {channel: _topic(channel, group) for channel, group in by_channel.items()}


def _topic(channel: str, group: Sequence[Finding]) -> ExtractedTopic:
    texts = list(dict.fromkeys(f.message.content for f in group))
    keyword = salient_keyword(texts)
    name = f"#{channel}: {keyword}" if keyword else f"#{channel}"
    types = sorted({f.type for f in group}, key=PRIORITY.index)
    about = f" about {keyword}" if keyword else ""
    description = f"{', '.join(types)} from #{channel}{about} ({len(group)} atoms, heuristic)"
    return ExtractedTopic(name=_clip(name, TOPIC_NAME_LENGTH), description=description)


def salient_keyword(texts: Sequence[str]) -> str | None:
    """The most common ticket id or error code in `texts`, else the most common content word."""
    codes = _most_common(_CODE.findall(text) for text in texts)
    if codes:
        return codes
    return _most_common(
        [w for w in (w.lower() for w in _WORD.findall(text.translate(_APOSTROPHES))) if _content(w)]
        for text in texts
    )


def _most_common(per_text: Iterable[list[str]]) -> str | None:
    """The token found in most texts; ties go to the longest (more specific), then first seen."""
    counts: Counter[str] = Counter()
    for tokens in per_text:
        counts.update(dict.fromkeys(tokens, 1))
    best: str | None = None
    for token, count in counts.items():  # insertion order, so first seen wins full ties
        if best is None or (count, len(token)) > (counts[best], len(best)):
            best = token
    return best


def _content(word: str) -> bool:
    """Whether a lowercased word may name a topic: long enough, not a stopword or a cue."""
    if len(word) < 4 or word.isdigit() or word in STOPWORDS:
        return False
    return not any(p.fullmatch(word) for patterns in _PATTERNS.values() for p, _ in patterns)
