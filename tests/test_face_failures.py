"""A face analyzer that raises: the frame is skipped, counted in /metrics, told once, and /healthz says degraded."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from fractions import Fraction

import av
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from model.face.landmarks import FaceObservation
from stream import metrics
from stream.clock import LiveClock
from stream.config import Settings, VideoSettings
from stream.faces import analysis as stage
from stream.faces.analysis import FaceHealth, VideoAnalysis
from stream.faces.windows import VideoFrames
from stream.frames import EndOfStream
from stream.pipeline import ParticipantContext
from stream.publish.hub import Hub
from stream.serve import server
from tests.test_offer_errors import SilentTranscriber

FPS = 10.0


class BrokenAnalyzer:
    def analyze(self, frame_rgb: np.ndarray, t: float) -> list[FaceObservation]:
        raise RuntimeError("landmarker crashed")

    def close(self) -> None:
        pass


@pytest.fixture
def broken_analyzer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stage, "make_face_analyzer", lambda *args: BrokenAnalyzer())


def analyse_frames(analysis: VideoAnalysis, count: int) -> None:
    """Offer `count` frames 1/FPS apart and wait until the worker has been through all of them."""
    frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
    times = [i / FPS for i in range(count)]
    for t in times:
        analysis.offer(frame, t)
        deadline = time.monotonic() + 5
        while analysis.analysed_until < t and time.monotonic() < deadline:
            time.sleep(0.005)
    assert analysis.analysed_until == times[-1]


def face_failures_total() -> float:
    return metrics.REGISTRY.get_sample_value("microemo_face_failures_total") or 0.0


def test_failed_frames_are_counted_and_the_participant_is_told_once(broken_analyzer: None) -> None:
    told: list[str] = []
    health = FaceHealth()
    counted_before = face_failures_total()
    analysis = VideoAnalysis(
        VideoSettings(analysis_fps=FPS), "call/alice", on_failure=told.append, health=health
    )
    try:
        analyse_frames(analysis, 4)
        assert analysis.failures == 4 and face_failures_total() == counted_before + 4
        assert len(told) == 1 and "landmarker crashed" in told[0]
        report = health.health("mediapipe")
        assert report["state"] == "degraded" and report["failures"] == 4
        assert "landmarker crashed" in report["last_error"]
    finally:
        analysis.close()
    assert health.health("mediapipe")["state"] == "ready"  # the failing participant has left


def test_every_failing_participant_keeps_the_stage_degraded_until_it_leaves(broken_analyzer: None) -> None:
    health = FaceHealth()
    settings = VideoSettings(analysis_fps=FPS)
    first, second = VideoAnalysis(settings, "a", health=health), VideoAnalysis(settings, "b", health=health)
    analyse_frames(first, 1)
    analyse_frames(second, 2)
    first.close()
    assert health.health("mediapipe")["state"] == "degraded" and health.failures == 3
    second.close()
    assert health.health("mediapipe")["state"] == "ready"


async def test_the_participant_gets_one_face_failed_error_event(broken_analyzer: None) -> None:
    hub, messages = Hub(), []
    hub.add_sink(messages.append)
    log = logging.LoggerAdapter(logging.getLogger("test"), {"call": "call-1", "participant": "alice"})
    video = VideoFrames(
        ParticipantContext("call-1", "alice", LiveClock(), hub.publish, log),
        VideoSettings(analysis_fps=FPS),
        None,
    )
    await video.open()
    frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
    frame.time_base = Fraction(1, 90_000)
    for index in range(3):
        frame.pts = index * 9_000
        await video.process(frame)
    assert video.analysis is not None
    deadline = time.monotonic() + 5
    while video.analysis.analysed_until < 0.2 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await video.process(EndOfStream())
    await asyncio.sleep(0)  # the event comes through the loop, from the analysis thread
    (error,) = messages
    assert (error["type"], error["code"], error["participant"]) == ("error", "face_failed", "alice")
    assert "landmarker crashed" in error["message"]


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    settings = Settings.model_validate(
        {"webrtc": {"host_addresses": ["127.0.0.1"], "ice_servers": []}, "emotion": {"enabled": False}}
    )
    async with TestClient(TestServer(server.create_app(settings, transcriber=SilentTranscriber()))) as client:
        yield client


async def test_healthz_names_the_faces_stage_degraded_while_its_analysis_fails(
    client: TestClient, broken_analyzer: None
) -> None:
    assert (await (await client.get("/healthz")).json())["stages"]["faces"]["state"] == "ready"
    analysis = VideoAnalysis(VideoSettings(analysis_fps=FPS), "call/alice")  # the server's own FaceHealth
    try:
        analyse_frames(analysis, 2)
        health = await (await client.get("/healthz")).json()
        assert health["status"] == "degraded" and health["degraded"] == ["faces"]
        assert health["stages"]["faces"]["state"] == "degraded"
        assert "landmarker crashed" in health["stages"]["faces"]["last_error"]
    finally:
        analysis.close()
    assert (await (await client.get("/healthz")).json())["stages"]["faces"]["state"] == "ready"
