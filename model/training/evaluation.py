"""Scores of emotion predictions against labelled clips: basic-family accuracy, weighted F1 and UAR beside the
majority-class baseline, per-family scores, a confusion matrix, breakdowns by grouping keys (dataset, speaker,
...), CCC of valence and arousal, and EMER-style set-level precision and recall of open-vocabulary labels."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.emotion.heads import FAMILY_AFFECT
from model.emotion.vocabulary import FAMILIES, EmotionVocabulary

# The predicted family of a clip without a final emotion estimate: wrong whatever the truth, never "neutral".
UNANSWERED = "none"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
# Keys a manifest line may carry with a meaning of their own; any other key is a grouping key (dataset, ...).
# (sentiment: a text corpus's sign of valence; families: every family a multi-label line falls in; neither is
# scored here)
# (dialogue, turn: where a text line stands in its conversation, read with the turns before it)
MANIFEST_KEYS = frozenset(
    {"clip", "text", "labels", "valence", "arousal", "description", "family", "sentiment", "families"}
    | {"dialogue", "turn"}
)


@dataclass(frozen=True, slots=True)
class LabelledClip:
    """One line of a manifest (JSON lines): the clip's file (a recording, or a still image standing for a face-only
    clip) or, instead, the text of an utterance (with its `dialogue`, `turn` and `speaker` among the groups), and
    what a person would say it shows."""

    clip: Path | None  # resolved against the manifest's folder; None for a text line
    labels: tuple[str, ...]  # open vocabulary, most fitting first
    valence: float | None = None  # -1..1; None (with arousal) where a corpus gives categories only
    arousal: float | None = None  # -1..1
    description: str = ""
    family: str | None = None  # the basic family the corpus means (FAMILIES); None: the first label's
    groups: Mapping[str, str] = field(default_factory=dict)  # other keys of the line: dataset, speaker, ...
    name: str = ""  # the clip as the manifest writes it; empty: the file's name
    text: str | None = None  # a text line: the utterance's words (then clip is None)
    dialogue: str | None = None  # a text line's conversation (its speaker is among the groups) ...
    turn: int = 0  # ... and its place in it, from 0

    def __post_init__(self) -> None:
        if (self.clip is None) == (self.text is None):
            raise ValueError("a line has a clip or a text, not both and not neither")
        if not self.name:
            object.__setattr__(self, "name", self.clip.name if self.clip is not None else self.text or "")

    @property
    def modality(self) -> str:
        """text, image (a still: the face alone), or media (a recording: voice, words and maybe face)."""
        if self.clip is None:
            return "text"
        return "image" if self.clip.suffix.lower() in IMAGE_SUFFIXES else "media"


@dataclass(frozen=True, slots=True)
class ClipPrediction:
    labels: tuple[str, ...]  # ranked, best first
    valence: float
    arousal: float


class ManifestError(ValueError):
    """A manifest line that cannot be used; the message names the line."""


def load_manifest(path: Path) -> list[LabelledClip]:
    clips = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            clips.append(clip_from_line(json.loads(line), path.parent))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ManifestError(
                f"{path}:{number}: {exc!r} (needs clip or text, and labels; valence and arousal are optional)"
            ) from exc
    if not clips:
        raise ManifestError(f"{path}: no labelled clip")
    return clips


def clip_from_line(row: Any, folder: Path) -> LabelledClip:
    """One parsed manifest line; ValueError (or KeyError, TypeError) says what is wrong with it."""
    if not isinstance(row, dict):
        raise TypeError(f"a line must be a JSON object, got {type(row).__name__}")
    labels = row["labels"]
    if not isinstance(labels, list) or not labels:
        raise ValueError("labels must be a non-empty list of words")
    # Absent or null alike: a corpus with category labels only; one without the other is a mistake.
    given_valence, given_arousal = row.get("valence"), row.get("arousal")
    if (given_valence is None) != (given_arousal is None):
        raise ValueError("give valence and arousal together, or neither")
    valence = arousal = None
    if given_valence is not None and given_arousal is not None:
        valence, arousal = float(given_valence), float(given_arousal)
        if not (-1 <= valence <= 1 and -1 <= arousal <= 1):
            raise ValueError(f"valence and arousal lie in -1..1, got {valence}, {arousal}")
    family = row.get("family")
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family {family!r} is not one of {', '.join(FAMILIES)}")
    groups = {}
    for key, value in row.items():
        if key in MANIFEST_KEYS or value is None:  # null: the line is in no group of this key
            continue
        # A typo of a known key (e.g. "valance": 0.5) fails here instead of becoming a group of numbers.
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(f"grouping key {key!r} must be a string or an integer, got {value!r}")
        groups[str(key)] = str(value)
    text = row.get("text")
    if text is not None and not isinstance(text, str):
        raise ValueError(f"text must be a string, got {text!r}")
    clip = None if text is not None and "clip" not in row else (folder / row["clip"]).resolve()
    return LabelledClip(
        clip=clip,
        text=text,
        labels=tuple(str(label) for label in labels),
        valence=valence,
        arousal=arousal,
        description=str(row.get("description") or ""),
        family=family,
        groups=groups,
        name=str(row["clip"]) if clip is not None else _text_name(row, text or ""),
        dialogue=None if row.get("dialogue") is None else str(row["dialogue"]),
        turn=int(row.get("turn") or 0),
    )


def _text_name(row: Mapping[str, Any], text: str) -> str:
    """A text line's name: its place in its dialogue, else its words."""
    if row.get("dialogue") is not None:
        return f"{row['dialogue']}#{row.get('turn', 0)}"
    return text[:60]


def ccc(truth: Sequence[float], predicted: Sequence[float]) -> float:
    """Lin's concordance correlation coefficient: agreement, not just correlation (1 perfect, 0 none)."""
    x, y = np.asarray(truth, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    denominator = x.var() + y.var() + (x.mean() - y.mean()) ** 2
    return float(2 * np.mean((x - x.mean()) * (y - y.mean())) / denominator) if denominator > 0 else 0.0


def per_family(truth: Sequence[str], predicted: Sequence[str]) -> dict[str, dict[str, float | int]]:
    """Precision, recall, F1, support (true clips) and predicted count of each family seen in either list."""
    pairs = list(zip(truth, predicted, strict=True))
    support, predicted_count = Counter(truth), Counter(predicted)
    scores: dict[str, dict[str, float | int]] = {}
    for family in [f for f in FAMILIES if support[f] or predicted_count[f]]:
        hits = sum(t == p == family for t, p in pairs)
        precision = hits / predicted_count[family] if predicted_count[family] else 0.0
        recall = hits / support[family] if support[family] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores[family] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": support[family],
            "predicted": predicted_count[family],
        }
    return scores


def weighted_f1(truth: Sequence[str], predicted: Sequence[str]) -> float:
    """F1 per true class, weighted by how often the class occurs."""
    support = Counter(truth)
    total = 0.0
    for label, count in support.items():
        tp = sum(t == p == label for t, p in zip(truth, predicted, strict=True))
        predicted_count = sum(p == label for p in predicted)
        precision = tp / predicted_count if predicted_count else 0.0
        recall = tp / count
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        total += count * f1
    return total / len(truth)


def unweighted_average_recall(truth: Sequence[str], predicted: Sequence[str]) -> float:
    """UAR: the mean of the recalls of the true classes, so a rare class counts as much as a common one."""
    hits: Counter[str] = Counter(t for t, p in zip(truth, predicted, strict=True) if t == p)
    support = Counter(truth)
    return float(np.mean([hits[label] / count for label, count in support.items()]))


def majority_family(truth: Sequence[str]) -> str:
    """The most frequent true family; a tie goes to the one first in FAMILIES, so reports are reproducible."""
    support = Counter(truth)
    return max(FAMILIES, key=lambda family: (support[family], -FAMILIES.index(family)))


def family_scores(truth: Sequence[str], predicted: Sequence[str]) -> dict[str, Any]:
    """Accuracy, weighted F1 and UAR of the predictions, and the share of the most frequent true family."""
    majority = majority_family(truth)
    return {
        "clips": len(truth),
        "answered": sum(p != UNANSWERED for p in predicted),
        "accuracy": float(np.mean([t == p for t, p in zip(truth, predicted, strict=True)])),
        "weighted_f1": weighted_f1(truth, predicted),
        "uar": unweighted_average_recall(truth, predicted),
        "majority_family": majority,
        "majority_share": truth.count(majority) / len(truth),
    }


def majority_baseline(truth: Sequence[str]) -> dict[str, Any]:
    """The scores of always answering the most frequent true family: what a model must beat to mean anything."""
    family = majority_family(truth)
    constant = [family] * len(truth)
    return {
        "family": family,
        "accuracy": truth.count(family) / len(truth),
        "weighted_f1": weighted_f1(truth, constant),
        "uar": unweighted_average_recall(truth, constant),
    }


def confusion_matrix(truth: Sequence[str], predicted: Sequence[str]) -> dict[str, Any]:
    """Counts of (true, predicted) family pairs: rows FAMILIES (truth), columns FAMILIES and "none" (predicted)."""
    columns = (*FAMILIES, UNANSWERED)
    counts = np.zeros((len(FAMILIES), len(columns)), dtype=np.int64)
    for t, p in zip(truth, predicted, strict=True):
        counts[FAMILIES.index(t), columns.index(p)] += 1
    return {"truth": list(FAMILIES), "predicted": list(columns), "counts": counts.tolist()}


def group_scores(
    clips: Sequence[LabelledClip], truth: Sequence[str], predicted: Sequence[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """family_scores of the clips sharing each value of each grouping key; a clip without the key is left out."""
    members: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, clip in enumerate(clips):
        for key, value in {"modality": clip.modality, **clip.groups}.items():
            members[key][value].append(i)
    return {
        key: {
            value: family_scores([truth[i] for i in indices], [predicted[i] for i in indices])
            for value, indices in sorted(by_value.items(), key=lambda item: natural_order(item[0]))
        }
        for key, by_value in sorted(members.items())
    }


def natural_order(value: str) -> tuple[int, str]:
    """Sort key putting speaker "2" before "10": shorter digit strings first, then as text."""
    return (len(value), value) if value.isdigit() else (1 << 30, value)


def set_scores(
    truth: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]], vocabulary: EmotionVocabulary
) -> tuple[float, float]:
    """EMER-style set-level precision and recall, averaged over clips, after mapping synonyms to one word."""
    precisions, recalls = [], []
    for true_labels, predicted_labels in zip(truth, predicted, strict=True):
        t = {vocabulary.canonical(label) for label in true_labels}
        p = {vocabulary.canonical(label) for label in predicted_labels}
        hits = len(t & p)
        precisions.append(hits / len(p) if p else 0.0)
        recalls.append(hits / len(t) if t else 0.0)
    return float(np.mean(precisions)), float(np.mean(recalls))


def family_of(labels: Sequence[str], vocabulary: EmotionVocabulary) -> str:
    """The basic emotion of the first label the vocabulary knows ("neutral" when none)."""
    for label in labels:
        if label in vocabulary:
            return vocabulary.family[vocabulary.words.index(vocabulary.canonical(label))]
    return "neutral"


def true_family(clip: LabelledClip, vocabulary: EmotionVocabulary) -> str:
    """The family a clip is scored against: its manifest's `family`, else that of its first known label."""
    if clip.family is not None:
        return clip.family
    if not any(label in vocabulary for label in clip.labels):
        # Scoring such a clip as "neutral" would quietly bend every metric of a corpus with its own label set.
        raise ManifestError(
            f"{clip.name}: none of its labels {list(clip.labels)} is in the emotion vocabulary; "
            f'give the line a "family" (one of {", ".join(FAMILIES)})'
        )
    return family_of(clip.labels, vocabulary)


def predicted_family(prediction: ClipPrediction | None, vocabulary: EmotionVocabulary) -> str:
    return UNANSWERED if prediction is None else family_of(prediction.labels, vocabulary)


def arousal_is_high(clip: LabelledClip, family: str) -> bool:
    """Whether a clip's arousal is high: its labelled arousal, or where its basic family sits."""
    if clip.arousal is not None:
        return clip.arousal > 0
    return FAMILY_AFFECT[family][1] > 0


def evaluate(
    clips: Sequence[LabelledClip],
    predictions: Sequence[ClipPrediction | None],
    vocabulary: EmotionVocabulary,
    top_k: int = 3,
) -> dict[str, Any]:
    """All scores of `predictions` (None: the clip got no final estimate) against `clips`, as JSON-ready dicts.

    Keys: metrics, baseline (majority class), per_family, confusion, groups, unanswered (clip names).
    """
    truth = [true_family(c, vocabulary) for c in clips]
    predicted = [predicted_family(p, vocabulary) for p in predictions]
    precision, recall = set_scores(
        [c.labels for c in clips], [p.labels[:top_k] if p else () for p in predictions], vocabulary
    )
    # CCC only where both sides have an affect: the corpus labelled it, and the model answered.
    affect = [
        (c.valence, c.arousal, p.valence, p.arousal)
        for c, p in zip(clips, predictions, strict=True)
        if p is not None and c.valence is not None and c.arousal is not None
    ]
    columns = np.asarray(affect, dtype=np.float64).reshape(-1, 4).T  # (4, clips with both)
    enough = len(affect) >= 2  # one point has no variance to agree on
    overall = family_scores(truth, predicted)
    high_truth = [arousal_is_high(c, family) for c, family in zip(clips, truth, strict=True)]
    high_predicted = [None if p is None else p.arousal > 0 for p in predictions]
    metrics = {
        "clips": len(clips),
        "answered": overall["answered"],
        "unanswered": len(clips) - overall["answered"],
        "accuracy": overall["accuracy"],
        "weighted_f1": overall["weighted_f1"],
        "uar": overall["uar"],
        "ccc_valence": ccc(columns[0], columns[2]) if enough else None,
        "ccc_arousal": ccc(columns[1], columns[3]) if enough else None,
        "ccc_clips": len(affect),
        # high (> 0) or low arousal, where the truth is the labelled arousal or its family's place
        "arousal_accuracy": float(np.mean([t == p for t, p in zip(high_truth, high_predicted, strict=True)])),
        "arousal_majority_share": float(max(np.mean(high_truth), 1 - np.mean(high_truth))),
        "label_precision": precision,
        "label_recall": recall,
        "top_k": top_k,
    }
    return {
        "metrics": metrics,
        "baseline": majority_baseline(truth),
        "per_family": per_family(truth, predicted),
        "confusion": confusion_matrix(truth, predicted),
        "groups": group_scores(clips, truth, predicted),
        "unanswered": [c.name for c, p in zip(clips, predictions, strict=True) if p is None],
    }
