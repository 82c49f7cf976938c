"""Learned emotion heads: voice and face readings of an utterance and their fusion, small MLPs run in numpy.

The heads read features the pipeline computes anyway: the Whisper encoder's states of the utterance (kept by
the transcription) and its prosody for the voice; the MediaPipe blendshape / AU-region statistics and FER's
classes for the face. Each head gives a distribution over the basic families; the fusion combines whichever
modalities are present (trained with modality dropout, so one alone, or none, still gets an answer). Weights
live in one .npz file written by `microemo train-heads` (model/training/fit_heads.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from model.audio.prosody import Prosody
from model.emotion.dialogue import DialogueHeads
from model.emotion.vocabulary import DATA_DIR, FAMILIES

DEFAULT_HEADS = DATA_DIR / "heads" / "heads-2.npz"  # heads/1 (voice only) stays beside it for comparison
WHISPER_FRAME_SAMPLES = 320  # one encoder state per 20 ms of 16 kHz audio

# Where each basic family sits on valence / arousal (-1..1), after Russell's circumplex; the heads' valence
# and arousal are these, weighted by the family probabilities.
FAMILY_AFFECT: dict[str, tuple[float, float]] = {
    "happiness": (0.8, 0.35),
    "surprise": (0.2, 0.8),
    "anger": (-0.7, 0.7),
    "fear": (-0.7, 0.6),
    "disgust": (-0.7, 0.25),
    "sadness": (-0.7, -0.45),
    "neutral": (0.0, -0.1),
}

# Prosody the voice head reads: none depends on the recording level or the speaker's history, so a clip
# and a live utterance are measured alike. Optional measures come with a "present" flag.
PROSODY_FIELDS = (
    "f0_median_st",  # semitones re 100 Hz
    "f0_range_semitones",
    "f0_slope_st_per_s",
    "jitter_local",
    "shimmer_local",
    "hnr_db",
    "energy_range_db",
    "voiced_fraction",
    "duration_s",
)
_OPTIONAL_PROSODY = 6  # the first six may be unmeasurable

# Face statistics the face head reads (model/emotion/clues.py's VisualClues): AU-region peaks, FER's classes
AU_FIELDS = (
    "brow_inner_raise",
    "brow_outer_raise",
    "brow_lower",
    "eye_widen",
    "eye_tighten",
    "cheek_raise",
    "lip_corner_pull",
    "lip_corner_depress",
    "lip_press",
    "mouth_open",
    "jaw_drop",
)
FER_FIELDS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

Vector = npt.NDArray[np.float32]


def pool_encoder_states(states: npt.NDArray[np.float32], n_samples: int) -> Vector:
    """(T, D) encoder states of a padded 30 s window → (2 D,) mean and std over the frames of the audio."""
    frames = min(len(states), max(1, math.ceil(n_samples / WHISPER_FRAME_SAMPLES)))
    own = np.asarray(states[:frames], dtype=np.float32)
    return np.concatenate([own.mean(axis=0), own.std(axis=0)]).astype(np.float32)


def prosody_features(prosody: Prosody) -> Vector:
    """(15,) the PROSODY_FIELDS values (0 where unmeasurable), then present flags of the optional six."""
    measured = {
        "f0_median_st": None
        if prosody.f0_median_hz is None
        else 12.0 * math.log2(prosody.f0_median_hz / 100.0),
        "f0_range_semitones": prosody.f0_range_semitones,
        "f0_slope_st_per_s": prosody.f0_slope_st_per_s,
        "jitter_local": prosody.jitter_local,
        "shimmer_local": prosody.shimmer_local,
        "hnr_db": prosody.hnr_db,
        "energy_range_db": prosody.energy_range_db,
        "voiced_fraction": prosody.voiced_fraction,
        "duration_s": prosody.duration_s,
    }
    values = [measured[name] for name in PROSODY_FIELDS]
    present = [float(v is not None) for v in values[:_OPTIONAL_PROSODY]]
    return np.array([0.0 if v is None else float(v) for v in values] + present, dtype=np.float32)


def voice_features(voice: Vector, prosody: Prosody) -> Vector:
    """What the voice head reads: pooled Whisper encoder states, then prosody."""
    return np.concatenate([voice, prosody_features(prosody)]).astype(np.float32)


def face_features(
    present: float, action_units: Mapping[str, float], expression: Mapping[str, float] | None
) -> Vector:
    """What the face head reads: face presence, AU-region peaks above baseline, FER's mean class scores."""
    aus = [float(action_units.get(name, 0.0)) for name in AU_FIELDS]
    fer = [float(expression.get(name, 0.0)) for name in FER_FIELDS] if expression else [0.0] * len(FER_FIELDS)
    return np.array([present, *aus, *fer, float(expression is not None)], dtype=np.float32)


@dataclass(frozen=True, slots=True)
class HeadReading:
    """One head's (or the fusion's) reading of an utterance."""

    families: dict[str, float]  # over FAMILIES, summing to 1
    valence: float
    arousal: float

    @classmethod
    def from_logits(cls, logits: npt.NDArray[np.floating[Any]]) -> HeadReading:
        probs = _softmax(np.asarray(logits, dtype=np.float64))
        families = {family: float(p) for family, p in zip(FAMILIES, probs, strict=True)}
        valence, arousal = affect_of(families)
        return cls(families=families, valence=valence, arousal=arousal)

    @property
    def log_probs(self) -> npt.NDArray[np.float64]:
        return np.log(np.array([max(self.families[f], 1e-6) for f in FAMILIES]))


def affect_of(families: Mapping[str, float]) -> tuple[float, float]:
    valence = sum(p * FAMILY_AFFECT[f][0] for f, p in families.items())
    arousal = sum(p * FAMILY_AFFECT[f][1] for f, p in families.items())
    return float(valence), float(arousal)


class Mlp:
    """Standardised input → Linear/ReLU layers → family logits. Weights as numpy arrays."""

    def __init__(self, mean: Vector, std: Vector, layers: Sequence[tuple[Vector, Vector]]) -> None:
        self.mean, self.std = mean, std
        self.layers = list(layers)  # (weight (out, in), bias (out,)), as torch.nn.Linear stores them

    @property
    def in_features(self) -> int:
        return len(self.mean)

    def logits(self, features: Vector) -> npt.NDArray[np.float32]:
        if features.shape != self.mean.shape:
            raise ValueError(f"expected {self.mean.shape[0]} features, got {features.shape}")
        x = (features - self.mean) / self.std
        for i, (weight, bias) in enumerate(self.layers):
            x = weight @ x + bias
            if i < len(self.layers) - 1:
                x = np.maximum(x, 0.0)
        return x.astype(np.float32)


class Fusion:
    """Log-linear fusion of the modalities present: bias + Σ_present (scale_m · gate_m · log p_m + shift_m).

    With no modality it answers the bias (the training prior); each modality's scale calibrates how much its
    reading is trusted, its shift what its presence says of each family. Trained with modality dropout on data
    where each modality is present or absent (model/training/fit_heads.py). A fusion knows the modalities it was
    fitted on (heads/1: voice and face; heads/2: voice, face and text); a reading of another is left out."""

    MODALITIES = ("voice", "face", "text")
    # The words' log-probabilities count by how sure the text head is of an emotion (1 − P(neutral)): scripted,
    # neutral words (acted corpora) then say little beside a voice, and emotional words in dialogue a lot
    GATED = ("text",)

    def __init__(self, bias: Vector, scales: Mapping[str, float], shifts: Mapping[str, Vector]) -> None:
        self.bias, self.scales, self.shifts = bias, dict(scales), dict(shifts)

    @classmethod
    def gate(cls, modality: str, reading: HeadReading) -> float:
        """How much a reading's log-probabilities count: 1, or for the words 1 − P(neutral)."""
        return 1.0 - reading.families["neutral"] if modality in cls.GATED else 1.0

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m in self.MODALITIES if m in self.scales)

    def fuse(
        self, readings: Mapping[str, HeadReading | None], say: Mapping[str, float] | None = None
    ) -> HeadReading:
        """say: how much each modality counts, 0..1 (default 1): 0 is the same as absent, 1 its fitted say; the
        words heard by an unsure recogniser count less (`words_say`)."""
        logits = self.bias.astype(np.float64).copy()
        for modality in self.modalities:
            reading = readings.get(modality)
            weight = 1.0 if say is None else say.get(modality, 1.0)
            if reading is not None and weight > 0:
                gate = self.gate(modality, reading)
                logits += weight * (self.scales[modality] * gate * reading.log_probs + self.shifts[modality])
        return HeadReading.from_logits(logits)


# How sure the recogniser must be of what it heard (the geometric mean of its tokens' probabilities) for the words
# to have their say: none at or below UNSURE, all at or above SURE, in between a straight line. Chosen on English
# speech (RAVDESS actors 1-16, TESS) beside speech in a language the English-only recogniser does not know (the
# URDU dataset), where it still writes English-looking words: model/data/TEXT_HEADS.md "The words' say".
HEARD_UNSURE = 0.41  # three in four Urdu utterances fall at or below it
HEARD_SURE = 0.48  # 95 % of English utterances reach it


def words_say(heard: float | None) -> float:
    """0..1: how much the words count, given how sure the recogniser was of them (None: written, not heard: 1)."""
    if heard is None:
        return 1.0
    return float(np.clip((heard - HEARD_UNSURE) / (HEARD_SURE - HEARD_UNSURE), 0.0, 1.0))


class HeadsMissingError(FileNotFoundError):
    """The configured heads file does not exist or lacks a head."""


@dataclass(frozen=True)
class EmotionHeads:
    """The voice head, the face head (None when no face head was trained), the words' heads (text head, fine
    labels, conversation context: model/emotion/dialogue.py; None before heads/2) and their fusion."""

    name: str  # e.g. "heads/2", named in every emotion event
    voice: Mlp
    face: Mlp | None
    fusion: Fusion
    meta: dict[str, Any]  # what they were trained on, with their validation scores
    text: DialogueHeads | None = None

    @property
    def voice_window(self) -> str:
        """The Whisper encoder window the voice head learned on (audio.asr.window; heads before it: full)."""
        return str(self.meta.get("voice_window", "full"))

    @classmethod
    def load(cls, path: Path = DEFAULT_HEADS) -> EmotionHeads:
        if not path.is_file():
            raise HeadsMissingError(
                f"emotion.heads: no heads file at {path} (train one: microemo train-heads)"
            )
        with np.load(path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
        meta = json.loads(str(arrays.pop("meta")))
        face = _mlp(arrays, "face") if "face.mean" in arrays else None
        fitted = [m for m in Fusion.MODALITIES if f"fusion.{m}.scale" in arrays]
        fusion = Fusion(
            bias=arrays["fusion.bias"],
            scales={m: float(arrays[f"fusion.{m}.scale"]) for m in fitted},
            shifts={m: arrays[f"fusion.{m}.shift"] for m in fitted},
        )
        text = DialogueHeads.from_arrays(arrays, meta["text"], str(path)) if "text.mean" in arrays else None
        return cls(
            name=meta["name"], voice=_mlp(arrays, "voice"), face=face, fusion=fusion, meta=meta, text=text
        )

    def read_voice(self, features: Vector) -> HeadReading:
        return HeadReading.from_logits(self.voice.logits(features))

    def read_face(self, features: Vector) -> HeadReading | None:
        return None if self.face is None else HeadReading.from_logits(self.face.logits(features))


def save_heads(
    path: Path,
    meta: Mapping[str, Any],
    voice: Mlp,
    face: Mlp | None,
    fusion: Fusion,
    text: Mapping[str, npt.NDArray[Any]] | None = None,
) -> None:
    """text: the words' heads' arrays (as DialogueHeads reads them); their meta goes in meta["text"]."""
    arrays: dict[str, npt.NDArray[Any]] = {"meta": np.array(json.dumps(dict(meta)))}
    arrays |= {key: np.asarray(value, dtype=np.float32) for key, value in (text or {}).items()}
    for prefix, mlp in (("voice", voice), ("face", face)):
        if mlp is None:
            continue
        arrays[f"{prefix}.mean"], arrays[f"{prefix}.std"] = mlp.mean, mlp.std
        for i, (weight, bias) in enumerate(mlp.layers):
            arrays[f"{prefix}.{i}.weight"], arrays[f"{prefix}.{i}.bias"] = weight, bias
    arrays["fusion.bias"] = fusion.bias
    for modality in fusion.modalities:
        arrays[f"fusion.{modality}.scale"] = np.array(fusion.scales[modality], dtype=np.float32)
        arrays[f"fusion.{modality}.shift"] = fusion.shifts[modality]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]


def _mlp(arrays: Mapping[str, npt.NDArray[Any]], prefix: str) -> Mlp:
    layers: list[tuple[Vector, Vector]] = []
    while f"{prefix}.{len(layers)}.weight" in arrays:
        i = len(layers)
        layers.append((arrays[f"{prefix}.{i}.weight"], arrays[f"{prefix}.{i}.bias"]))
    return Mlp(arrays[f"{prefix}.mean"], arrays[f"{prefix}.std"], layers)


def _softmax(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    e = np.exp(logits - logits.max())
    return e / e.sum()
