"""The face head learned from labelled face images: the shipped file, a real smiling photo, deterministic training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from skimage import data

from model.emotion.heads import FER_FIELDS, HeadReading, Mlp, _mlp
from model.emotion.vocabulary import DATA_DIR, FAMILIES
from model.face.micro import EXPRESSIVE
from model.face.signals import REGION_SIGNALS
from model.training.face_corpora import LabelledImage
from model.training.face_features import StillFace, StillFaceReader, still_features
from model.training.fit_face import (
    FEATURE_NAMES,
    FaceSample,
    baselines,
    training_rows,
    with_features,
)
from model.training.fit_heads import HeadConfig, LabelledFeatures, train_mlp

SHIPPED = DATA_DIR / "heads" / "heads-2.npz"  # the face head ships inside heads/2


@pytest.fixture(scope="module")
def shipped() -> tuple[Mlp, dict]:
    with np.load(SHIPPED, allow_pickle=False) as stored:
        arrays = {key: stored[key] for key in stored.files}
    return _mlp(arrays, "face"), json.loads(str(arrays["meta"]))


def test_shipped_face_head_loads_as_an_mlp_over_the_face_features(shipped: tuple[Mlp, dict]) -> None:
    head, meta = shipped
    assert isinstance(head, Mlp)
    assert head.in_features == len(FEATURE_NAMES) == 20
    assert meta["families"] == list(FAMILIES) and "facial_expressions" in meta["face"]["baselines"]
    assert head.layers[-1][0].shape[0] == len(FAMILIES)


def test_smiling_astronaut_reads_as_happiness(shipped: tuple[Mlp, dict]) -> None:
    head, meta = shipped
    face = StillFaceReader().read(data.astronaut())
    assert face is not None
    features = still_features(face, meta["face"]["baselines"]["facial_expressions"])
    reading = HeadReading.from_logits(head.logits(features))
    assert max(reading.families, key=reading.families.__getitem__) == "happiness"


# -- training, on synthetic faces (no dataset needed) ------------------------------------------------
SIGNAL_NAMES = tuple(s.name for s in REGION_SIGNALS)
PROTOTYPES = {  # family → (the signal it raises, FER's class)
    "happiness": ("lip_corner_pull", "happy"),
    "sadness": ("lip_corner_depress", "sad"),
    "neutral": (None, "neutral"),
}


def synthetic_faces(count: int, split: str, seed: int) -> list[FaceSample]:
    rng = np.random.default_rng(seed)
    samples = []
    for k in range(count):
        family = list(PROTOTYPES)[k % len(PROTOTYPES)]
        raised, fer_class = PROTOTYPES[family]
        signals = {name: float(rng.normal(0.1, 0.03)) for name in SIGNAL_NAMES}
        if raised is not None:
            signals[raised] += 0.5
        fer = rng.dirichlet(np.ones(len(FER_FIELDS)) * 0.5)
        fer = 0.5 * fer + 0.5 * (np.array(FER_FIELDS) == fer_class)
        expression = {name: float(p) for name, p in zip(FER_FIELDS, fer, strict=True)}
        image = LabelledImage(Path(f"/faces/{split}{k}.jpg"), (family,), family, "synthetic", split)
        samples.append(FaceSample(image, StillFace(signals, expression), None))
    return samples


def fit(samples: list[FaceSample]) -> Mlp:
    x, y = training_rows(samples, {"synthetic": "full"}, seed=0)
    return train_mlp(
        LabelledFeatures(x, y, speakers=[""] * len(y)), HeadConfig(hidden=16, epochs=30, lr=1e-2)
    )


def test_training_is_deterministic_and_learns_the_synthetic_faces() -> None:
    train = synthetic_faces(90, "train", seed=1)
    base = baselines(train)
    assert set(base["synthetic"]) == set(EXPRESSIVE)
    train = with_features(train, base)
    first, second = fit(train), fit(train)
    for (w1, b1), (w2, b2) in zip(first.layers, second.layers, strict=True):
        np.testing.assert_array_equal(w1, w2)
        np.testing.assert_array_equal(b1, b2)
    held_out = with_features(synthetic_faces(30, "test", seed=2), base)
    right = [
        FAMILIES[int(np.argmax(first.logits(s.features)))] == s.image.family
        for s in held_out
        if s.features is not None
    ]
    assert len(right) == 30 and np.mean(right) > 0.9


def test_training_rows_also_teach_the_head_without_fer_and_at_any_presence() -> None:
    train = with_features(synthetic_faces(30, "train", seed=3), baselines(synthetic_faces(30, "train", 3)))
    x, y = training_rows(train, {"synthetic": "full"}, seed=0)
    assert len(x) == 2 * len(train)
    without = x[x[:, -1] == 0.0]
    assert len(without) == len(train) and not without[:, 12:19].any()
    assert 0.2 <= x[:, 0].min() and x[:, 0].max() <= 1.0 and x[:, 0].std() > 0.1
    blind, _ = training_rows(train, {"synthetic": "fer_blind"}, seed=0)
    assert len(blind) == len(train) and not blind[:, -1].any()
