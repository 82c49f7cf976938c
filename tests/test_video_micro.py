"""Micro-expression detection on a real face photo, animated and analysed by the real MediaPipe landmarker."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from model.face.landmarks import FaceObservation, FaceTracker, MediaPipeFaceAnalyzer
from model.face.micro import FaceWindow, MicroEpisode, MicroExpressionBuffer
from tests.synth import SyntheticClip, TrueEpisode, render_clip, write_video, write_y4m

FPS = 30.0
FRAME_S = 1.0 / FPS


def observe(clip: SyntheticClip) -> list[tuple[float, list[FaceObservation]]]:
    """Every frame through MediaPipe and the tracker: (t, tracked faces) per frame."""
    analyzer, tracker = MediaPipeFaceAnalyzer(), FaceTracker()
    try:
        return [
            (t, tracker.update(analyzer.analyze(frame, t), t))
            for t, frame in zip(clip.times, clip.frames, strict=True)
        ]
    finally:
        analyzer.close()


def buffer_of(
    frames: list[tuple[float, list[FaceObservation]]], geometry_only: bool = False
) -> MicroExpressionBuffer:
    buffer = MicroExpressionBuffer(30.0)
    for t, faces in frames:
        buffer.mark_frame(t)
        for face in faces:
            # A backend without blendshapes (insightface) leaves the signals to landmark geometry.
            buffer.push(dataclasses.replace(face, blendshapes=None, pose=None) if geometry_only else face)
    return buffer


def whole(clip: SyntheticClip, buffer: MicroExpressionBuffer) -> FaceWindow:
    return buffer.window(0.0, len(clip.frames) / clip.fps)


def matching(window: FaceWindow, truth: TrueEpisode) -> list[MicroEpisode]:
    return [
        e for e in window.episodes if e.region in truth.regions and abs(e.onset - truth.onset) <= 2 * FRAME_S
    ]


@pytest.fixture(scope="session")
def expression_clip() -> SyntheticClip:
    return render_clip(duration_s=4.0, fps=FPS)


@pytest.fixture(scope="session")
def expression_frames(expression_clip: SyntheticClip) -> list[tuple[float, list[FaceObservation]]]:
    return observe(expression_clip)


@pytest.fixture(scope="session")
def expression_window(expression_clip: SyntheticClip, expression_frames) -> FaceWindow:
    return whole(expression_clip, buffer_of(expression_frames))


@pytest.fixture(scope="session")
def still_clip() -> SyntheticClip:
    return render_clip(expressions=False, duration_s=3.0, fps=FPS, seed=1)


@pytest.fixture(scope="session")
def blink_clip() -> SyntheticClip:
    return render_clip(expressions=False, blink_at=1.0, duration_s=2.0, fps=FPS, seed=2)


def truth_of(clip: SyntheticClip, action: str) -> TrueEpisode:
    return next(e for e in clip.truth if e.action == action)


@pytest.mark.parametrize("geometry_only", [False, True], ids=["blendshapes", "geometry"])
def test_brow_raise_is_a_micro_expression_in_the_brows(expression_clip, expression_frames, geometry_only):
    window = whole(expression_clip, buffer_of(expression_frames, geometry_only))
    truth = truth_of(expression_clip, "brow_raise")
    found = matching(window, truth)
    assert found, f"no brow episode near onset {truth.onset}: {window.episodes}"
    assert all(e.kind == "micro" for e in found)
    assert all(truth.onset <= e.apex <= truth.offset for e in found)


@pytest.mark.parametrize("geometry_only", [False, True], ids=["blendshapes", "geometry"])
def test_smile_is_a_macro_expression_at_the_lip_corners(expression_clip, expression_frames, geometry_only):
    window = whole(expression_clip, buffer_of(expression_frames, geometry_only))
    truth = truth_of(expression_clip, "smile")
    found = matching(window, truth)
    assert [e.region for e in found] == ["lip_corner_pull"], window.episodes
    assert found[0].kind == "macro"
    assert abs(found[0].offset - truth.offset) <= 0.2


def test_every_episode_lies_within_a_rendered_action(expression_clip, expression_window):
    # Side effects of an action (a smile thins the lips) may show in other regions, but never outside it.
    for episode in expression_window.episodes:
        assert any(t.onset - 2 * FRAME_S <= episode.onset <= t.offset for t in expression_clip.truth), episode


def test_still_face_yields_no_episode(still_clip):
    window = whole(still_clip, buffer_of(observe(still_clip)))
    assert window.present == 1.0
    assert window.episodes == []
    assert window.blinks == 0


def test_blink_is_a_blink_not_an_expression(blink_clip):
    window = whole(blink_clip, buffer_of(observe(blink_clip)))
    truth = truth_of(blink_clip, "blink")
    assert window.blinks == 1
    assert window.expressions == []
    (blink,) = window.episodes
    assert blink.region == "blink" and abs(blink.onset - truth.onset) <= 2 * FRAME_S


def test_window_reports_only_the_episodes_inside_it(expression_frames):
    buffer = buffer_of(expression_frames)
    brows = buffer.window(0.8, 1.6)
    assert {e.region for e in brows.episodes} == {"brow_inner_raise", "brow_outer_raise"}
    assert buffer.window(1.6, 1.95).episodes == []
    assert "lip_corner_pull" in {e.region for e in buffer.window(3.0, 3.2).episodes}


def test_window_without_a_face_is_empty_and_invents_nothing(expression_frames):
    buffer = buffer_of(expression_frames)
    for k in range(30):
        buffer.mark_frame(5.0 + k * FRAME_S)  # the face has left the picture
    window = buffer.window(5.0, 6.0)
    assert (window.present, window.track, window.episodes, window.blinks) == (0.0, None, [], 0)
    assert window.to_event_fields()["micro"] == []


def test_present_counts_the_frames_that_show_the_face(expression_frames):
    buffer = buffer_of(expression_frames[:60])
    for k in range(60, 120):
        buffer.mark_frame(k * FRAME_S)
    assert buffer.window(1.0, 3.0).present == pytest.approx(30 / 61, abs=0.02)


def test_no_face_in_a_blank_frame():
    analyzer = MediaPipeFaceAnalyzer()
    try:
        assert analyzer.analyze(np.full((480, 640, 3), 128, dtype=np.uint8), 0.0) == []
    finally:
        analyzer.close()


def test_event_fields_are_json_with_the_api_fields(expression_window):
    fields = json.loads(json.dumps(expression_window.to_event_fields()))
    assert set(fields) == {"track", "present", "regions", "micro"}
    assert fields["track"] == 0 and fields["present"] == 1.0
    assert fields["regions"]["lip_corner_pull"]["max"] > 0.05
    assert {"region", "onset", "apex", "offset", "intensity", "kind"} == set(fields["micro"][0])


def test_window_carries_aligned_crops_and_blendshapes(expression_window):
    assert 1 <= len(expression_window.crops) <= 4
    assert all(c.shape == (112, 112, 3) and c.dtype == np.uint8 for c in expression_window.crops)
    assert expression_window.blendshapes["mouthSmileLeft"] > 0.5  # the astronaut smiles throughout


def test_memory_is_bounded_by_time(expression_frames):
    buffer = MicroExpressionBuffer(2.0)
    clip_s = len(expression_frames) * FRAME_S
    for loop in range(5):  # 20 s of media
        for t, faces in expression_frames:
            buffer.mark_frame(loop * clip_s + t)
            for face in faces:
                buffer.push(dataclasses.replace(face, t=loop * clip_s + t))
    latest = 5 * clip_s - FRAME_S
    assert buffer.window(0.0, latest - 2.5).present == 0.0
    recent = buffer.window(latest - 2.0, latest)
    assert recent.present == 1.0
    assert sum(len(b.frames) for b in buffer._tracks.values()) <= 2.0 * FPS + 1


def test_rendered_clip_round_trips_through_y4m_and_mp4(tmp_path):
    import av

    clip = render_clip(expressions=False, duration_s=0.3, fps=FPS)
    for path in (
        write_y4m(tmp_path / "face.y4m", clip.frames, FPS),
        write_video(tmp_path / "face.mp4", clip.frames, FPS),
    ):
        with av.open(str(path)) as container:
            assert container.streams.video[0].average_rate == FPS
            decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(decoded) == len(clip.frames)
        # 4:2:0 chroma and (for mp4) lossy coding: close, not equal.
        assert np.abs(decoded[4].astype(int) - clip.frames[4]).mean() < 4.0


def test_a_long_frown_keeps_the_resting_smile_as_its_reference():
    # The photo smiles at rest; a 2.4 s frown pulls the smile signal far below it. The rest it left must stay
    # the baseline, or the return to rest would read as a big smile.
    clip = render_clip(expressions=False, duration_s=4.0, fps=15, script=[("frown", 0.8, 3.2)])
    window = whole(clip, buffer_of(observe(clip)))
    (frown,) = matching(window, truth_of(clip, "frown"))
    assert frown.kind == "macro"
    assert window.regions["lip_corner_pull"]["max"] < 0.1
    assert not [e for e in window.episodes if e.region == "lip_corner_pull"]
