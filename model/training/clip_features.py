"""Training clips as the visual encoder takes them: decoded files (cached as .pt), sampled as live calls are."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import torch
from tqdm import tqdm

from model.face.landmarks import (
    FaceAnalyzer,
    FaceObservation,
    FaceTracker,
    MediaPipeFaceAnalyzer,
    choose_speaker,
)
from model.face.signals import aligned_crop, face_signals, five_points
from model.microemo.clip import ClipFeatures, next_grid_time
from model.microemo.window_clip import as_clip_features, crop_of_size
from model.training.evaluation import LabelledClip, load_manifest

FEATURES_VERSION = 3  # bump when extraction changes, so stale cache files are not reused


def extract_clip_features(
    path: Path,
    fps: float = 5.0,
    frame_size: int = 224,
    analyzer: FaceAnalyzer | None = None,
    crop_size: int = 112,
    max_width: int = 640,
) -> ClipFeatures:
    """Decodes a clip with PyAV, keeps a frame every 1/fps s and finds the speaker's face in each kept frame.

    Without an analyzer a fresh MediaPipe one serves this clip (its VIDEO mode wants increasing timestamps,
    and one clip's face tracks should not continue into the next); a given analyzer is not closed.
    """
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    own = analyzer is None
    face_analyzer = MediaPipeFaceAnalyzer(num_faces=2, crop_size=crop_size) if analyzer is None else analyzer
    tracker = FaceTracker()
    frames: list[np.ndarray] = []  # (S, S, 3) uint8 each
    times: list[float] = []
    faces: list[list[FaceObservation]] = []  # tracked faces of each kept frame
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path}: no video stream")
            first, next_t = None, 0.0
            for frame in container.decode(container.streams.video[0]):
                if frame.time is None:
                    continue
                first = frame.time if first is None else first
                t = frame.time - first  # media time since the clip's first frame
                if t + 1e-6 < next_t:
                    continue
                next_t = next_grid_time(next_t, t, fps)
                frames.append(frame.to_ndarray(format="rgb24", width=frame_size, height=frame_size))
                if frame.width > max_width:  # the landmarker needs no more; saves most of its time
                    frame = frame.reformat(
                        width=max_width, height=round(frame.height * max_width / frame.width)
                    )
                rgb = frame.to_ndarray(format="rgb24")
                found = tracker.update(face_analyzer.analyze(rgb, t), t)
                faces.append([with_crop(face, rgb, crop_size) for face in found])
                times.append(t)
    finally:
        if own:
            face_analyzer.close()
    if not frames:
        raise ValueError(f"{path}: no decodable video frame")
    return features_of(frames, times, faces, speaker_track(times, faces), crop_size)


def with_crop(face: FaceObservation, rgb: np.ndarray, size: int) -> FaceObservation:
    """The face with an aligned crop of `size` (made from its landmarks when the analyzer gave none that size)."""
    if face.aligned is not None and face.aligned.shape[:2] == (size, size):
        return face
    if face.aligned is not None:
        return replace(face, aligned=crop_of_size(face.aligned, size))
    return replace(face, aligned=aligned_crop(rgb, five_points(face.landmarks), size))


def speaker_track(times: Sequence[float], faces: Sequence[Sequence[FaceObservation]]) -> int | None:
    """The face that speaks in a clip, by the rule of live calls (choose_speaker) without speech activity:
    of the steadily seen faces, the one whose mouth opens and closes most; None when no face was found."""
    series: dict[int, tuple[list[float], list[float]]] = {}
    for t, frame_faces in zip(times, faces, strict=True):
        for face in frame_faces:
            opening = face_signals(face.landmarks, face.blendshapes, face.pose).values["mouth_open"]
            ts, values = series.setdefault(face.track, ([], []))
            ts.append(t)
            values.append(opening)
    mouths = {track: (np.asarray(ts), np.asarray(values)) for track, (ts, values) in series.items()}
    return choose_speaker(mouths)


def features_of(
    frames: list[np.ndarray],
    times: list[float],
    faces: Sequence[Sequence[FaceObservation]],
    speaker: int | None,
    crop_size: int,
) -> ClipFeatures:
    crops = np.zeros((len(frames), crop_size, crop_size, 3), dtype=np.uint8)
    mask = np.zeros(len(frames), dtype=bool)
    for k, frame_faces in enumerate(faces):
        for face in frame_faces:
            if face.track == speaker and face.aligned is not None:
                crops[k], mask[k] = face.aligned, True
    return as_clip_features(np.stack(frames), np.asarray(times, dtype=np.float64), crops, mask)


def cache_path(clip: Path, cache_dir: Path, fps: float, frame_size: int, crop_size: int) -> Path:
    """Where a clip's features lie: keyed by the file (path, size, mtime) and the extraction settings."""
    stat = clip.stat()
    key = f"{clip.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{fps}|{frame_size}|{crop_size}|{FEATURES_VERSION}"
    return cache_dir / f"{clip.stem}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"


def cached_clip_features(
    clip: Path, cache_dir: Path, fps: float = 5.0, frame_size: int = 224, crop_size: int = 112
) -> ClipFeatures:
    """A clip's features from the cache, or extracted and cached (plain tensors, loaded weights_only)."""
    if not clip.is_file():
        raise FileNotFoundError(f"clip not found: {clip}")
    path = cache_path(clip, cache_dir, fps, frame_size, crop_size)
    if path.is_file():
        return ClipFeatures(**torch.load(path, weights_only=True))
    features = extract_clip_features(clip, fps=fps, frame_size=frame_size, crop_size=crop_size)
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(features.as_dict(), partial)
    os.replace(partial, path)
    return features


def extract_manifest(
    manifest: Path, cache_dir: Path, fps: float = 5.0, frame_size: int = 224, crop_size: int = 112
) -> tuple[list[LabelledClip], list[ClipFeatures]]:
    """Every clip of a manifest (JSON lines) with its features; only clips not cached yet are decoded."""
    clips = load_manifest(manifest)
    features = [
        cached_clip_features(c.clip, cache_dir, fps, frame_size, crop_size)
        for c in tqdm(clips, desc="features", unit="clip")
    ]
    return clips, features
