"""What overload sheds, and when: the shedding decision fed made-up lags, the audio lag the VAD reports, the face
frames it thins, the interim updates it skips, and the event loop's lag measured."""

from __future__ import annotations

import asyncio
import gc
import time
from fractions import Fraction

import av
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from model.audio.vad import SileroModel
from stream import metrics
from stream.clock import FileClock, LiveClock
from stream.config import Settings, VadSettings, VideoSettings
from stream.faces.analysis import VideoAnalysis
from stream.frames import EndOfStream
from stream.overload import MIN_FACE_SHARE, FrameShare, Shedder, watch_loop_lag
from stream.serve import server
from stream.speech.resample import PcmChunk
from stream.speech.segment import ScoreSpeech, Segment
from stream.transcribe.asr_service import TranscriptionService
from stream.transcribe.transcribe import Transcribe
from tests.test_offer_errors import SETTINGS, SilentTranscriber
from tests.test_pipeline import Events, RecordingTranscriber, feed_speech


def shed(work: str) -> float:
    return metrics.REGISTRY.get_sample_value("microemo_shed_total", {"work": work}) or 0.0


def test_a_late_loop_halves_the_face_share_down_to_a_floor_and_calm_ticks_give_it_back_slowly() -> None:
    shedder = Shedder(0.05)
    assert shedder.face_share == 1.0 and not shedder.shedding and shedder.interim_allowed
    shedder.observe(0.08)
    assert shedder.face_share == 0.5 and shedder.shedding and not shedder.interim_allowed
    assert shedder.cheap_interim_allowed  # interims on their own cheap worker go only after the faces' floor
    for _ in range(5):
        shedder.observe(1.2)
    assert shedder.face_share == MIN_FACE_SHARE  # a face is still read, at a few frames a second
    assert not shedder.cheap_interim_allowed
    shedder.observe(0.03)  # late, but under the threshold: neither more shed nor given back
    assert shedder.face_share == MIN_FACE_SHARE
    shedder.observe(0.002)
    assert shedder.face_share == pytest.approx(MIN_FACE_SHARE + 0.05)
    for _ in range(20):
        shedder.observe(0.0)
    assert shedder.face_share == 1.0 and shedder.interim_allowed


def test_late_audio_sheds_though_the_loop_is_on_time_and_each_tick_reads_its_own_worst() -> None:
    shedder = Shedder(0.1)
    for lag in (0.02, 0.35, 0.05):  # three chunks of some participant's audio since the last tick
        shedder.note_audio_lag(lag)
    shedder.tick(0.001)  # the loop's own timer was on time
    assert shedder.face_share == 0.5
    shedder.tick(0.001)  # nothing late since: calm, the share starts to come back
    assert shedder.face_share == pytest.approx(0.55)


async def test_the_vad_tells_the_shedder_how_late_a_live_participants_audio_comes() -> None:
    clock = LiveClock()
    clock.track_offset(0.0)
    assert clock.start is not None
    clock.start -= 1.0  # the first frame came a second ago: audio from t = 0 now is ~1 s late
    shedder = Shedder(0.1)
    stage = ScoreSpeech(SileroModel(), clock, shedder)
    before = metrics.REGISTRY.get_sample_value("microemo_audio_lag_seconds_count") or 0.0
    await stage.process(PcmChunk(0.0, np.zeros(1024, dtype=np.float32)))
    assert (metrics.REGISTRY.get_sample_value("microemo_audio_lag_seconds_count") or 0.0) - before == 2
    shedder.tick(0.0)
    assert shedder.shedding
    # a file's clock is not real time: nothing measured, nothing shed
    file_shedder = Shedder(0.1)
    await ScoreSpeech(SileroModel(), FileClock(), file_shedder).process(
        PcmChunk(0.0, np.zeros(1024, dtype=np.float32))
    )
    file_shedder.tick(0.0)
    assert not file_shedder.shedding


def test_face_frames_are_thinned_evenly_to_the_share_and_each_shed_one_is_counted() -> None:
    shedder = Shedder(0.05)
    shedder.observe(0.1)
    shedder.observe(0.1)  # share 0.25
    share, before = FrameShare(shedder), shed("face_frames")
    kept = [share.keep() for _ in range(12)]
    assert kept == [False, False, False, True] * 3
    assert shed("face_frames") - before == 9
    assert all(FrameShare(None).keep() for _ in range(5))  # no shedder (a file): nothing shed


def test_the_face_analysis_takes_only_the_share_of_its_sampled_frames() -> None:
    shedder = Shedder(0.05)
    shedder.observe(0.1)  # share 0.5
    analysis = VideoAnalysis(VideoSettings(analysis_fps=10, queue_frames=64), "shed", shedder=shedder)
    try:
        image = np.zeros((120, 160, 3), np.uint8)
        for index in range(20):  # 2 s at 10 fps: all 20 are due for analysis, half of them are shed
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, 10)
            analysis.offer(frame, index / 10)
        assert analysis.shed == 10
        # not `idle`, which only says nothing is queued: the last frame may still be in analysis
        deadline = time.monotonic() + 10
        while analysis.analysed_until < 1.9 - 1e-6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert analysis.analysed_until == pytest.approx(1.9)  # the last frame was a kept one, and analysed
        assert analysis.dropped == 0
    finally:
        analysis.close()


async def test_interim_transcripts_are_shed_while_face_frames_are_and_every_final_one_still_comes() -> None:
    events, transcriber = Events(), RecordingTranscriber()
    shedder = Shedder(0.05)
    shedder.observe(0.2)  # the loop lags: face frames are being shed
    asr = TranscriptionService(transcriber)
    segment = Segment(events.context(), VadSettings(), interim_s=1.0)
    segment.then(Transcribe(events.context(), asr, None, shedder))
    before = shed("interim")
    pattern = [(False, 0.5), (True, 3.2), (False, 1.0), (True, 1.5), (False, 1.0)]
    await feed_speech(segment, transcriber, pattern)
    await segment.process(EndOfStream())

    assert shed("interim") - before >= 3  # at 1, 2 and 3 s of the first utterance, at 1 s of the second
    assert [(m["type"], m.get("final")) for m in events.messages] == [
        ("speech.start", None),
        ("speech.end", None),
        ("utterance", True),
        ("speech.start", None),
        ("speech.end", None),
        ("utterance", True),
    ]
    await asr.close()


async def test_a_blocked_event_loop_is_measured_and_sheds_face_frames() -> None:
    shedder = Shedder(0.05)
    ticks_before = metrics.REGISTRY.get_sample_value("microemo_loop_lag_seconds_count") or 0.0
    watcher = asyncio.create_task(watch_loop_lag(shedder, tick_s=0.02))
    try:
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # the loop is held, as a starved or GIL-bound one would be
        await asyncio.sleep(0.05)
        assert shedder.shedding
        late = metrics.REGISTRY.get_sample_value("microemo_loop_lag_seconds_bucket", {"le": "0.2"}) or 0.0
        total = metrics.REGISTRY.get_sample_value("microemo_loop_lag_seconds_count") or 0.0
        assert total > ticks_before and total > late  # the late tick is counted past 200 ms
    finally:
        watcher.cancel()


async def test_the_models_loaded_at_start_are_frozen_out_of_the_collectors_full_passes() -> None:
    gc.unfreeze()
    app = server.create_app(Settings.model_validate(SETTINGS), transcriber=SilentTranscriber())
    async with TestClient(TestServer(app)):
        frozen = gc.get_freeze_count()
        assert frozen > 10_000  # the models' objects: a full pass no longer walks them under load
        assert gc.isenabled()  # garbage made while calls run is still collected
