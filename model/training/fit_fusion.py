"""Readings of every modality on held-out lines → the fusion of heads/2 (voice, face, words), with its calibration.

The fusion (model/emotion/heads.py `Fusion`) is fitted where each modality is present or absent, as a call has
them: acted recordings (voice, and the words Whisper hears in them, which the corpora keep neutral on purpose),
dialogue lines (words alone, each read with the dialogue before it), faces (a face alone). Every reading it
learns from comes from a head that never trained on that line (out-of-fold voice readings; dev splits for
the words and the faces), so it learns how far each head is trusted on lines it has not seen. Modality dropout
teaches it what a missing modality means. Calibration is measured by cross-validation over these rows:
expected calibration error of the fused family probabilities, beside accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from model.emotion.heads import Fusion, HeadReading, affect_of
from model.emotion.vocabulary import FAMILIES
from model.training.fit_heads import HeadConfig, fit_fusion


@dataclass(frozen=True)
class FusionRows:
    """N rows of readings: each modality's reading or None where it is absent, the true family, the source, and
    each reading's say (`Fusion.fuse`; 1 where a modality has none: the words heard by an unsure recogniser
    count less, in training as live)."""

    readings: dict[str, list[HeadReading | None]]  # modality → N readings
    families: npt.NDArray[np.int64]  # (N,) index into FAMILIES
    sources: list[str]  # e.g. "recordings", "meld dev", "faces dev"
    say: dict[str, list[float]] = field(default_factory=dict)  # modality → N says, 0..1

    def __post_init__(self) -> None:
        n = len(self.families)
        lengths = [len(rows) for rows in self.readings.values()] + [len(says) for says in self.say.values()]
        if any(length != n for length in lengths) or len(self.sources) != n:
            raise ValueError("every modality needs one reading (or None) and say per row")

    def says(self, modality: str) -> list[float]:
        return self.say.get(modality, [1.0] * len(self.families))

    def subset(self, rows: npt.NDArray[np.int64]) -> FusionRows:
        return FusionRows(
            {m: [readings[i] for i in rows] for m, readings in self.readings.items()},
            self.families[rows],
            [self.sources[i] for i in rows],
            {m: [says[i] for i in rows] for m, says in self.say.items()},
        )

    @staticmethod
    def join(parts: Sequence[FusionRows]) -> FusionRows:
        modalities = [m for m in Fusion.MODALITIES if any(m in part.readings for part in parts)]
        readings: dict[str, list[HeadReading | None]] = {m: [] for m in modalities}
        say: dict[str, list[float]] = {m: [] for m in modalities}
        for part in parts:
            for m in modalities:
                readings[m] += part.readings.get(m, [None] * len(part.families))
                say[m] += part.says(m)
        families = np.concatenate([part.families for part in parts]).astype(np.int64)
        return FusionRows(readings, families, [s for part in parts for s in part.sources], say)


def family_probabilities(fusion: Fusion, rows: FusionRows) -> npt.NDArray[np.float64]:
    """(N, 7) fused family probabilities, in FAMILIES order."""
    probs = []
    for i in range(len(rows.families)):
        say = {m: says[i] for m, says in rows.say.items()}
        reading = fusion.fuse({m: readings[i] for m, readings in rows.readings.items()}, say)
        probs.append([reading.families[f] for f in FAMILIES])
    return np.array(probs, dtype=np.float64).reshape(-1, len(FAMILIES))


def expected_calibration_error(
    probs: npt.NDArray[np.float64], truth: npt.NDArray[np.int64], bins: int = 10
) -> float:
    """ECE of the top family: |accuracy − confidence| averaged over equal-width confidence bins, by their size."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == truth
    edges = np.linspace(0.0, 1.0, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            error += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(error)


def cross_validated(
    rows: FusionRows, config: HeadConfig, folds: int = 5
) -> dict[str, dict[str, float | int]]:
    """Each row's fused probabilities from a fusion fitted without it: accuracy and ECE, in all and by source."""
    rng = np.random.default_rng(config.seed)
    fold_of = rng.permutation(len(rows.families)) % folds
    probs = np.zeros((len(rows.families), len(FAMILIES)))
    for fold in range(folds):
        held = np.flatnonzero(fold_of == fold)
        kept = np.flatnonzero(fold_of != fold)
        train = rows.subset(kept)
        fusion = fit_fusion(train.readings, train.families, config, say=train.say)
        probs[held] = family_probabilities(fusion, rows.subset(held))
    return {"all": _calibration(probs, rows.families)} | {
        source: _calibration(probs[mask], rows.families[mask])
        for source in sorted(set(rows.sources))
        if (mask := np.array(rows.sources) == source).any()
    }


def fit(rows: FusionRows, config: HeadConfig) -> Fusion:
    return fit_fusion(rows.readings, rows.families, config, say=rows.say)


def _calibration(probs: npt.NDArray[np.float64], truth: npt.NDArray[np.int64]) -> dict[str, float | int]:
    return {
        "rows": len(truth),
        "accuracy": float(np.mean(probs.argmax(axis=1) == truth)),
        "ece": expected_calibration_error(probs, truth),
        "mean_confidence": float(probs.max(axis=1).mean()),
    }


def reading(families: Mapping[str, float]) -> HeadReading:
    """A reading from family probabilities alone (valence and arousal where the families sit)."""
    return HeadReading(dict(families), *affect_of(families))
