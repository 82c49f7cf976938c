"""Text clues of one utterance: VADER valence of the transcript plus a few lexical cues of stance."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

# Lexical cues are matched on whole words of the lower-cased transcript; multi-word phrases first so that
# "kind of" is one hedge, not two words. Kept short on purpose: they are clues for a reader, not a classifier.
NEGATIONS: tuple[str, ...] = (
    "not", "no", "never", "nothing", "nobody", "none", "neither", "nor", "nowhere", "without",
    "can't", "cannot", "won't", "don't", "doesn't", "didn't", "isn't", "aren't", "wasn't", "weren't",
    "haven't", "hasn't", "hadn't", "shouldn't", "wouldn't", "couldn't", "mustn't", "ain't",
)  # fmt: skip
HEDGES: tuple[str, ...] = (
    "i guess", "i suppose", "i think", "i mean", "i don't know", "kind of", "sort of", "kinda", "sorta",
    "maybe", "perhaps", "probably", "possibly", "somewhat", "a bit", "a little", "more or less",
    "not sure", "i'm not sure", "apparently", "seems", "seemed", "i feel like", "if anything",
)  # fmt: skip
INTENSIFIERS: tuple[str, ...] = (
    "very", "really", "extremely", "incredibly", "absolutely", "totally", "completely", "utterly",
    "super", "truly", "deeply", "highly", "awfully", "terribly", "insanely", "seriously", "way too",
    "so much", "at all",
)  # fmt: skip

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'"})


@dataclass(frozen=True, slots=True)
class TextAffect:
    """Affect clues of a transcript. `valence` is VADER's compound score in -1..1."""

    valence: float
    positive: float  # VADER's proportions of positive / negative / neutral text, each 0..1
    negative: float
    neutral: float
    negations: tuple[str, ...]
    hedges: tuple[str, ...]
    intensifiers: tuple[str, ...]
    exclamations: int
    questions: int
    word_count: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@cache
def _vader() -> Any:
    # Imported lazily: the package is a clue source, not a hard dependency of model/.
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


@cache
def _phrase_pattern(phrases: tuple[str, ...]) -> re.Pattern[str]:
    longest_first = sorted(phrases, key=len, reverse=True)
    alternatives = "|".join(re.escape(p) for p in longest_first)
    return re.compile(rf"(?<![\w'])(?:{alternatives})(?![\w'])")


def find_phrases(text: str, phrases: tuple[str, ...]) -> tuple[str, ...]:
    """The phrases of `phrases` that occur in `text` as whole words, in order of occurrence."""
    normalised = text.lower().translate(_APOSTROPHES)
    return tuple(m.group(0) for m in _phrase_pattern(phrases).finditer(normalised))


def analyse_text(text: str) -> TextAffect:
    """Text clues of one transcript; an empty transcript gives valence 0 and no cues."""
    scores = _vader().polarity_scores(text)
    return TextAffect(
        valence=float(scores["compound"]),
        positive=float(scores["pos"]),
        negative=float(scores["neg"]),
        neutral=float(scores["neu"]),
        negations=find_phrases(text, NEGATIONS),
        hedges=find_phrases(text, HEDGES),
        intensifiers=find_phrases(text, INTENSIFIERS),
        exclamations=text.count("!"),
        questions=text.count("?"),
        word_count=len(re.findall(r"[\w']+", text)),
    )
