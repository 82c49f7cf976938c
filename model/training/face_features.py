"""Labelled face images → what the face head reads, computed by the live engines (for model/training/fit_face.py).

A still goes through the same engines as a call's frame: MediaPipe's FaceLandmarker (landmarks, blendshapes,
the aligned 112 px crop), `face_signals` (AU-named region signals), FER's CNN on the aligned crop. Its
utterance-level reading is then built by the live code too: the frame is pushed into a MicroExpressionBuffer
after one second of resting face, the window over the still is read by ClueExtractor.visual_clues, and
heads.face_features turns those VisualClues into the vector. So the AU peaks are rises above a baseline exactly
as in a call; only the baseline differs.

The baseline. A live person's regions are measured against the median of their own resting frames; a still
has no resting frames of its own. Its stand-in is the corpus's resting face: the per-signal median over the
neutral-labelled faces of the corpus's *train* split (the median, as the live baseline is a median). What it
costs: a person whose resting face is far from the corpus's (lip corners that turn down at rest, a face
MediaPipe reads as half-smiling) carries that offset into every rise, where a live call removes it; and a
still's peak is one frame where a live peak is the maximum over an utterance's frames (so live peaks run a
little higher by their noise). The micro-expression episodes are absent: a still has no onset or offset.

Each image gets a fresh analyzer (one frame, face detection as on a call's first frame), so no landmark
tracking is carried from one unrelated photo to the next. Per-image results are cached (keyed by path, size and
mtime) in one .npz before any baseline is applied, so a new baseline costs no MediaPipe run.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from model.emotion.clues import ClueExtractor, VisualClues
from model.emotion.heads import face_features
from model.face.expression import EXPRESSION_CLASSES, ExpressionClassifier
from model.face.landmarks import FaceObservation, MediaPipeFaceAnalyzer
from model.face.micro import EXPRESSIVE, MicroExpressionBuffer
from model.face.signals import REGION_SIGNALS, FaceSignals, face_signals
from model.training.feature_cache import cache_key, save_arrays

log = logging.getLogger(__name__)

SIGNALS: tuple[str, ...] = tuple(s.name for s in REGION_SIGNALS)  # expressive, then head_yaw/pitch/roll
REST_S = 1.0  # resting face fed before the still: more than the buffer's min_baseline_s (0.5 s)
REST_FPS = 10.0
SAVE_EVERY = 500  # images computed between cache writes


@dataclass(frozen=True, slots=True)
class StillFace:
    """One face found in a still: its region signals (SIGNALS, activation units; head_* degrees) and FER's
    class probabilities on its aligned crop (EXPRESSION_CLASSES)."""

    signals: dict[str, float]
    expression: dict[str, float]

    def to_array(self) -> npt.NDArray[np.float32]:
        """(len(SIGNALS) + 7,) float32, the cache's row."""
        values = [self.signals[n] for n in SIGNALS] + [self.expression[c] for c in EXPRESSION_CLASSES]
        return np.array(values, dtype=np.float32)

    @classmethod
    def from_array(cls, row: npt.NDArray[np.float32]) -> StillFace:
        n = len(SIGNALS)
        return cls(
            signals={name: float(v) for name, v in zip(SIGNALS, row[:n], strict=True)},
            expression={name: float(v) for name, v in zip(EXPRESSION_CLASSES, row[n:], strict=True)},
        )


class StillFaceReader:
    """A still → StillFace (or None: MediaPipe finds no face, as a call's frame would show none)."""

    def __init__(self) -> None:
        self._expression = ExpressionClassifier(num_threads=1)

    def read(self, image_rgb: npt.NDArray[np.uint8]) -> StillFace | None:
        analyzer = MediaPipeFaceAnalyzer(num_faces=1)
        try:
            faces = analyzer.analyze(image_rgb, 0.0)
        finally:
            analyzer.close()
        if not faces or faces[0].aligned is None:
            return None
        face, crop = faces[0], faces[0].aligned
        signals = face_signals(face.landmarks, face.blendshapes, face.pose)
        return StillFace(
            signals={name: float(signals.values[name]) for name in SIGNALS},
            expression=self._expression.classify_many([crop]),
        )

    def read_file(self, path: Path) -> StillFace | None:
        return self.read(load_rgb(path))


def load_rgb(path: Path) -> npt.NDArray[np.uint8]:
    """(H, W, 3) uint8 RGB; a grey image gets three equal channels, as a grey webcam frame would."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image {path}")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def resting_baseline(faces: Sequence[StillFace]) -> dict[str, float]:
    """The corpus's resting face: per expressive signal, the median over faces (give it neutral train faces)."""
    if not faces:
        raise ValueError("a baseline needs at least one resting face")
    return {name: float(np.median([f.signals[name] for f in faces])) for name in EXPRESSIVE}


def still_clues(face: StillFace, baseline: Mapping[str, float]) -> VisualClues:
    """The VisualClues a call would give for an utterance showing this face after a rest at `baseline`."""
    buffer = MicroExpressionBuffer(buffer_s=REST_S + 1.0)
    track = 0
    rest_values = {**face.signals, **{name: baseline[name] for name in EXPRESSIVE}}
    t = 0.0
    while t < REST_S - 1e-9:
        buffer.mark_frame(t)
        buffer.push(_observation(track, t, rest_values))
        t += 1.0 / REST_FPS
    buffer.mark_frame(REST_S)
    buffer.push(_observation(track, REST_S, face.signals))
    window = buffer.window(REST_S, REST_S, track=track)
    clues = ClueExtractor(expression=None, sentences=None).visual_clues(window)
    if clues is None:
        raise RuntimeError("the still's window lost its face")  # present is 1 by construction
    # FER on the window's one crop: what classify_many gives for it (computed once, when the image was read)
    return dataclasses.replace(clues, expression=dict(face.expression))


def still_features(face: StillFace, baseline: Mapping[str, float]) -> npt.NDArray[np.float32]:
    """What the face head reads for this still (heads.face_features of its VisualClues)."""
    clues = still_clues(face, baseline)
    return face_features(clues.present, clues.action_units, clues.expression)


def _observation(track: int, t: float, values: Mapping[str, float]) -> FaceObservation:
    return FaceObservation(
        track=track,
        t=t,
        box=(0.0, 0.0, 1.0, 1.0),
        landmarks=np.zeros((478, 2), np.float32),
        score=1.0,
        signals=FaceSignals(values=dict(values), center=(0.0, 0.0), interocular=1.0),
    )


def extract_stills(
    paths: Sequence[Path], cache: Path, reader: StillFaceReader | None = None
) -> list[StillFace | None]:
    """StillFace of every image (None where no face is found), from the cache where an image is unchanged."""
    stored: dict[str, npt.NDArray[np.float32]] = {}
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as data:
            stored = {key: data[key] for key in data.files}
    result: list[StillFace | None] = []
    fresh = 0
    for path in tqdm(paths, desc="face features", unit="image", disable=None):
        key = cache_key(path)
        if key not in stored:
            reader = reader or StillFaceReader()
            face = reader.read_file(path)
            stored[key] = face.to_array() if face is not None else np.zeros(0, np.float32)
            fresh += 1
            if fresh % SAVE_EVERY == 0:  # an interrupted run keeps most of its work
                save_arrays(cache, stored)
        row = stored[key]
        result.append(StillFace.from_array(row) if len(row) else None)
    if fresh:
        save_arrays(cache, stored)
    log.info(
        "face features: %d images, %d computed, %d from %s", len(paths), fresh, len(paths) - fresh, cache
    )
    return result
