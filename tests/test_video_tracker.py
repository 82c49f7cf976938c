"""Face tracks keep their ids across frames; backends are chosen and fail clearly; the speaking face is found."""

from __future__ import annotations

import numpy as np
import pytest

from model.face.landmarks import (
    UNTRACKED,
    FaceModelMissingError,
    FaceObservation,
    FaceTracker,
    InsightFaceAnalyzer,
    MediaPipeFaceAnalyzer,
    make_face_analyzer,
    speaking_track,
)
from tests.synth import rest_frame, rest_landmarks

FPS = 15.0


@pytest.fixture(scope="session")
def face_shape() -> np.ndarray:
    """The astronaut's real landmarks, centred on 0 and scaled to a 100 px wide face: (478, 2) float32."""
    points = rest_landmarks().astype(np.float64)
    points -= points.mean(axis=0)
    return (points * 100.0 / np.ptp(points[:, 0])).astype(np.float32)


def face_at(shape: np.ndarray, x: float, y: float, t: float) -> FaceObservation:
    landmarks = shape + np.array([x, y], dtype=np.float32)
    x0, y0 = landmarks.min(axis=0)
    x1, y1 = landmarks.max(axis=0)
    return FaceObservation(UNTRACKED, t, (float(x0), float(y0), float(x1), float(y1)), landmarks, 1.0)


def test_crossing_faces_keep_their_ids(face_shape):
    tracker = FaceTracker(track_ttl_s=1.0)
    ids_left_to_right, ids_right_to_left = set(), set()
    for k in range(45):  # 3 s: two faces walk past each other at 120 px/s, 10 px apart in height
        t = k / FPS
        a = face_at(face_shape, 100 + 120 * t, 240, t)
        b = face_at(face_shape, 460 - 120 * t, 250, t)
        # While they overlap the front face hides the other one from the detector.
        detections = [a] if abs(a.box[0] - b.box[0]) < 30 else [a, b]
        tracked = tracker.update(detections, t)
        ids_left_to_right.add(tracked[0].track)
        if len(tracked) == 2:
            ids_right_to_left.add(tracked[1].track)
    assert ids_left_to_right == {0}
    assert ids_right_to_left == {1}


def test_face_back_within_ttl_keeps_its_id(face_shape):
    tracker = FaceTracker(track_ttl_s=1.0)
    first = tracker.update([face_at(face_shape, 300, 240, 0.0)], 0.0)
    tracker.update([], 0.5)
    again = tracker.update([face_at(face_shape, 303, 240, 0.9)], 0.9)
    assert again[0].track == first[0].track


def test_face_back_after_ttl_gets_a_new_id(face_shape):
    tracker = FaceTracker(track_ttl_s=1.0)
    first = tracker.update([face_at(face_shape, 300, 240, 0.0)], 0.0)
    for k in range(1, 25):
        tracker.update([], k / FPS)
    assert tracker.active_tracks == []
    again = tracker.update([face_at(face_shape, 300, 240, 2.0)], 2.0)
    assert again[0].track != first[0].track


def test_a_second_face_far_away_starts_its_own_track(face_shape):
    tracker = FaceTracker()
    tracker.update([face_at(face_shape, 150, 240, 0.0)], 0.0)
    tracked = tracker.update([face_at(face_shape, 152, 240, 0.1), face_at(face_shape, 500, 240, 0.1)], 0.1)
    assert [f.track for f in tracked] == [0, 1]


def test_real_landmarker_track_is_stable_over_a_drifting_face():
    from tests.synth import render_clip

    clip = render_clip(expressions=False, duration_s=1.0, fps=FPS)
    analyzer, tracker = MediaPipeFaceAnalyzer(), FaceTracker()
    try:
        tracks = [
            f.track
            for t, frame in zip(clip.times, clip.frames, strict=True)
            for f in tracker.update(analyzer.analyze(frame, t), t)
        ]
    finally:
        analyzer.close()
    assert tracks == [0] * len(clip.frames)


def test_mediapipe_accepts_repeated_media_times():
    # MediaPipe's VIDEO mode needs strictly increasing timestamps; media time may repeat (duplicated frames).
    analyzer = MediaPipeFaceAnalyzer()
    try:
        frame = rest_frame()
        first = analyzer.analyze(frame, 1.0)
        second = analyzer.analyze(frame, 1.0)
    finally:
        analyzer.close()
    assert len(first) == len(second) == 1
    assert first[0].landmarks.shape == (478, 2) and first[0].blendshapes


def test_missing_insightface_pack_names_the_path(tmp_path):
    missing = tmp_path / "insightface"
    with pytest.raises(FaceModelMissingError, match=str(missing / "models" / "buffalo_l")):
        InsightFaceAnalyzer(model_dir=str(missing))
    with pytest.raises(FaceModelMissingError, match=str(missing)):
        make_face_analyzer("insightface", str(missing), num_faces=2)


def test_missing_mediapipe_model_names_the_path(tmp_path):
    with pytest.raises(FaceModelMissingError, match="nowhere.task"):
        make_face_analyzer("mediapipe", str(tmp_path / "nowhere.task"), num_faces=1)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="dlib"):
        make_face_analyzer("dlib", None, num_faces=1)


def test_speaking_track_is_the_mouth_that_moves_with_speech():
    t = np.arange(0.0, 6.0, 1 / FPS)
    speech = ((t > 1.0) & (t < 2.5)) | ((t > 3.5) & (t < 5.0))
    rng = np.random.default_rng(0)
    # The speaker's mouth opens and closes ~4 times a second while speaking; the listener's only drifts.
    talker = 0.05 + speech * 0.3 * np.abs(np.sin(2 * np.pi * 4 * t)) + rng.normal(0, 0.01, t.size)
    listener = 0.05 + 0.02 * np.sin(2 * np.pi * 0.2 * t) + rng.normal(0, 0.01, t.size)
    mouths = {3: (t, listener), 7: (t, talker)}
    assert speaking_track(mouths, t, speech.astype(float)) == 7
    assert speaking_track({3: (t, listener)}, t, speech.astype(float)) is None
