"""FER facial expression classes on a real photograph (scikit-image's astronaut)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage import data

from model.face.expression import EXPRESSION_CLASSES, ExpressionClassifier, ExpressionModelMissing

# Where OpenCV's frontal-face Haar cascade finds the smiling face in astronaut() (512x512): (x, y, w, h).
ASTRONAUT_FACE = (177, 66, 95, 95)


@pytest.fixture(scope="module")
def classifier() -> ExpressionClassifier:
    return ExpressionClassifier()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


def top(probs: dict[str, float]) -> str:
    return max(probs, key=probs.__getitem__)


def test_smiling_face_box_is_happy(classifier: ExpressionClassifier, astronaut: np.ndarray) -> None:
    probs = classifier.classify(astronaut, ASTRONAUT_FACE)
    assert list(probs) == list(EXPRESSION_CLASSES)
    assert top(probs) == "happy" and probs["happy"] > 0.9


def test_smiling_face_crop_is_happy(classifier: ExpressionClassifier, astronaut: np.ndarray) -> None:
    x, y, w, h = ASTRONAUT_FACE
    crop = astronaut[y - 10 : y + h + 10, x - 10 : x + w + 10]  # the box grown by 10 px, as for a box
    assert top(classifier.classify(crop)) == "happy"


def test_grey_frame_works_like_colour(classifier: ExpressionClassifier, astronaut: np.ndarray) -> None:
    grey = (astronaut @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    assert top(classifier.classify(grey, ASTRONAUT_FACE)) == "happy"


def test_mean_over_several_crops_is_a_distribution(
    classifier: ExpressionClassifier, astronaut: np.ndarray
) -> None:
    x, y, w, h = ASTRONAUT_FACE
    boxes = [
        (x + dx, y + dy, w + dw, h + dw) for dx, dy, dw in [(0, 0, 0), (-6, -4, 12), (5, 3, -8), (-3, 6, 4)]
    ]
    probs = classifier.classify_many([astronaut] * len(boxes), boxes)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-6)
    assert top(probs) == "happy"


def test_box_past_the_frame_edge_is_padded(classifier: ExpressionClassifier, astronaut: np.ndarray) -> None:
    probs = classifier.classify(astronaut, (-20, 470, 80, 80))
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-6)


def test_missing_model_names_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "emotion_model_quantized.tflite"
    with pytest.raises(ExpressionModelMissing, match=str(missing)):
        ExpressionClassifier(missing)
