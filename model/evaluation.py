"""Scores of emotion predictions against labelled clips: basic-emotion accuracy / weighted F1, CCC of valence
and arousal, and EMER-style set-level precision and recall of open-vocabulary labels (synonyms merged)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.vocabulary import EmotionVocabulary


@dataclass(frozen=True, slots=True)
class LabelledClip:
    """One line of a manifest (JSON lines): the clip's file and what a person would say it shows."""

    clip: Path  # resolved against the manifest's folder
    labels: tuple[str, ...]  # open vocabulary, most fitting first
    valence: float  # -1..1
    arousal: float  # -1..1
    description: str = ""


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
            row = json.loads(line)
            clip = LabelledClip(
                clip=(path.parent / row["clip"]).resolve(),
                labels=tuple(str(label) for label in row["labels"]),
                valence=float(row["valence"]),
                arousal=float(row["arousal"]),
                description=str(row.get("description", "")),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ManifestError(f"{path}:{number}: {exc!r} (needs clip, labels, valence, arousal)") from exc
        if not clip.labels or not (-1 <= clip.valence <= 1 and -1 <= clip.arousal <= 1):
            raise ManifestError(
                f"{path}:{number}: labels must not be empty; valence and arousal lie in -1..1"
            )
        clips.append(clip)
    if not clips:
        raise ManifestError(f"{path}: no labelled clip")
    return clips


def ccc(truth: Sequence[float], predicted: Sequence[float]) -> float:
    """Lin's concordance correlation coefficient: agreement, not just correlation (1 perfect, 0 none)."""
    x, y = np.asarray(truth, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    denominator = x.var() + y.var() + (x.mean() - y.mean()) ** 2
    return float(2 * np.mean((x - x.mean()) * (y - y.mean())) / denominator) if denominator > 0 else 0.0


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


def evaluate(
    clips: Sequence[LabelledClip],
    predictions: Sequence[ClipPrediction],
    vocabulary: EmotionVocabulary,
    top_k: int = 3,
) -> dict[str, float | int]:
    true_families = [family_of(c.labels, vocabulary) for c in clips]
    predicted_families = [family_of(p.labels, vocabulary) for p in predictions]
    precision, recall = set_scores(
        [c.labels for c in clips], [p.labels[:top_k] for p in predictions], vocabulary
    )
    return {
        "clips": len(clips),
        "accuracy": float(np.mean([t == p for t, p in zip(true_families, predicted_families, strict=True)])),
        "weighted_f1": weighted_f1(true_families, predicted_families),
        "ccc_valence": ccc([c.valence for c in clips], [p.valence for p in predictions]),
        "ccc_arousal": ccc([c.arousal for c in clips], [p.arousal for p in predictions]),
        "label_precision": precision,
        "label_recall": recall,
        "top_k": top_k,
    }
