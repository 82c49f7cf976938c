"""The stages as a chain, fed frames directly (no network peer): early transcription, LLM fallback and skip, face
catch-up, and the end-of-stream drain of a whole session."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import replace
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from model.audio.prosody import SpeakerBaseline
from model.audio.segmenter import ClosedUtterance
from model.audio.vad import CHUNK_SAMPLES, SileroModel
from model.audio.whisper import Transcript
from model.emotion.clues import Clues, UtteranceInput
from model.emotion.estimator import EmotionEstimate
from model.face.landmarks import FaceObservation
from stream import metrics
from stream.clock import FileClock, LiveClock, MediaClock
from stream.config import AudioSettings, EmotionSettings, VadSettings, VideoSettings
from stream.emotion.estimate import Estimate, Refine
from stream.faces import analysis as stage
from stream.faces.windows import FaceWindows, VideoFrames
from stream.frames import EndOfStream, HeardUtterance, ScoredChunk, SeenUtterance
from stream.pipeline import ParticipantContext, Processor
from stream.publish.hub import Hub
from stream.session import PipelineParts, build_session
from stream.speech.segment import Segment
from stream.transcribe.asr_service import TranscriptionService
from stream.transcribe.transcribe import Transcribe
from tests.media import SPEECH_RATE, Speech

CHUNK_S = CHUNK_SAMPLES / 16_000


class Events:
    """A hub and everything it published, as the JSON a subscriber gets."""

    def __init__(self) -> None:
        self.hub = Hub()
        self.messages: list[dict[str, Any]] = []
        self.hub.add_sink(self.messages.append)

    def types(self) -> list[str]:
        return [m["type"] for m in self.messages]

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    def context(self, clock: MediaClock | None = None) -> ParticipantContext:
        log = logging.LoggerAdapter(logging.getLogger("test"), {"call": "call-1", "participant": "alice"})
        return ParticipantContext("call-1", "alice", clock or LiveClock(), self.hub.publish, log)


class Collect(Processor[Any, None]):
    """The end of a chain under test: keeps what reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Any] = []

    async def process(self, frame: Any) -> None:
        self.frames.append(frame)


class RecordingTranscriber:
    """Says how much audio it was given; `heard_until` tells when (in media time) each call was made."""

    name = "recording"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.heard_until = 0.0
        self.calls: list[tuple[int, float]] = []  # (samples, media time fed so far)

    def transcribe(self, pcm: np.ndarray, t_offset: float, words: bool = True) -> Transcript:
        self.calls.append((len(pcm), self.heard_until))
        time.sleep(self.delay_s)
        return Transcript(text=f"{len(pcm)} samples", words=(), lang="en")


async def feed_speech(
    segment: Segment, transcriber: RecordingTranscriber, pattern: list[tuple[bool, float]]
) -> None:
    """Speech (noise the VAD scores 0.9) and silence (0.05) in 32 ms chunks, paced so that tasks get to run."""
    t = 0.0
    rng = np.random.default_rng(0)
    for speaking, seconds in pattern:
        for _ in range(round(seconds / CHUNK_S)):
            samples = rng.standard_normal(CHUNK_SAMPLES) * 0.2 if speaking else np.zeros(CHUNK_SAMPLES)
            await segment.process(ScoredChunk(t, samples.astype(np.float32), 0.9 if speaking else 0.05))
            t += CHUNK_S
            transcriber.heard_until = t
            await asyncio.sleep(0.003)


async def transcribe_chain(events: Events, transcriber: RecordingTranscriber) -> tuple[Segment, Collect]:
    segment, collect = Segment(events.context(), VadSettings()), Collect()
    segment.then(Transcribe(events.context(), TranscriptionService(transcriber))).then(collect)
    return segment, collect


async def test_a_transcription_started_at_a_pause_is_used_when_the_silence_closes_the_utterance() -> None:
    events, transcriber = Events(), RecordingTranscriber()
    segment, collect = await transcribe_chain(events, transcriber)
    await feed_speech(segment, transcriber, [(False, 0.5), (True, 1.0), (False, 1.0)])
    await segment.process(EndOfStream())

    (heard, end) = collect.frames
    assert isinstance(heard, HeardUtterance) and isinstance(end, EndOfStream)
    ((samples, asked_at),) = transcriber.calls  # one transcription, asked before the utterance closed
    assert asked_at < heard.utterance.t1 + VadSettings().min_silence_ms / 1000
    assert events.of_type("utterance")[0]["text"] == f"{samples} samples" == heard.transcript.text


async def test_a_transcription_started_at_a_pause_is_discarded_when_speech_resumes() -> None:
    events, transcriber = Events(), RecordingTranscriber()
    segment, collect = await transcribe_chain(events, transcriber)
    pattern = [(False, 0.5), (True, 1.0), (False, 0.3), (True, 0.6), (False, 1.0)]
    await feed_speech(segment, transcriber, pattern)
    await segment.process(EndOfStream())

    (heard, _) = collect.frames
    assert heard.utterance.t1 == pytest.approx(2.4, abs=0.1)  # one utterance over both stretches of speech
    (early, _), (whole, _) = transcriber.calls
    assert early < whole  # the first pause's transcription ran, but its text is not the utterance's
    (utterance,) = events.of_type("utterance")
    assert utterance["text"] == f"{whole} samples" and len(heard.utterance.pcm) == whole


def interim_chain(
    events: Events, transcriber: RecordingTranscriber, interim_emotion_s: float | None = None
) -> tuple[Segment, Collect, TranscriptionService]:
    asr = TranscriptionService(transcriber)
    segment, collect = Segment(events.context(), VadSettings(), interim_s=1.0), Collect()
    segment.then(Transcribe(events.context(), asr, interim_emotion_s)).then(collect)
    return segment, collect, asr


async def test_long_speech_gets_interim_transcripts_before_its_final_one() -> None:
    events, transcriber = Events(), RecordingTranscriber()
    segment, collect, _ = interim_chain(events, transcriber, interim_emotion_s=2.0)
    await feed_speech(segment, transcriber, [(False, 0.5), (True, 4.5), (False, 1.0)])
    await segment.process(EndOfStream())

    utterances = events.of_type("utterance")
    *interim, final = utterances
    assert [u["final"] for u in utterances] == [False] * len(interim) + [True]
    assert len(interim) == 4  # at 1, 2, 3 and 4 s of speech, the ASR idle each time
    assert {u["utterance"] for u in utterances} == {final["utterance"]}
    assert [u["t1"] for u in interim] == pytest.approx([1.5, 2.5, 3.5, 4.5], abs=0.05)
    assert final["closed_by"] == "silence" and all("closed_by" not in u for u in interim)
    # one interim in 2 s of speech goes on for an interim face and emotion (at 2 and 4 s), then the final one
    assert [(h.final, round(h.utterance.t1 - h.utterance.t0, 1)) for h in collect.frames[:-1]] == [
        (False, 2.0),
        (False, 4.0),
        (True, 4.5),
    ]


async def test_interim_work_is_skipped_while_the_asr_is_busy_and_dropped_once_the_utterance_closed() -> None:
    events, transcriber = Events(), RecordingTranscriber(delay_s=1.5)  # slower than real time
    segment, collect, asr = interim_chain(events, transcriber)

    def skipped() -> float:
        return (
            metrics.REGISTRY.get_sample_value("microemo_interim_skipped_total", {"event": "utterance"}) or 0.0
        )

    before = skipped()
    await feed_speech(segment, transcriber, [(False, 0.5), (True, 3.2), (False, 1.0)])
    await segment.process(EndOfStream())

    assert skipped() - before >= 1  # the 2 s one came while the 1 s one was still transcribing
    utterances = events.of_type("utterance")
    final_at = next(i for i, u in enumerate(utterances) if u["final"])
    assert final_at == len(utterances) - 1  # nothing about the utterance after its close
    assert [h.final for h in collect.frames[:-1]] == [True]


# -- emotion: the fast estimate, the LLM's refinement, its fallback and its skip ---------------------------
class FakeRefiner:
    name = "llm:fake"

    def __init__(self, *, fails: bool = False, overloaded: bool = False, delay_s: float = 0.0) -> None:
        self.fails, self.overloaded, self.delay_s = fails, overloaded, delay_s
        self.refined: list[str] = []

    async def refine(
        self, call: str, uid: str, text: str, estimate: EmotionEstimate, window: object
    ) -> EmotionEstimate:
        await asyncio.sleep(self.delay_s)
        if self.fails:
            raise ValueError("unparsable answer")
        self.refined.append(uid)
        return replace(
            estimate, labels=(("delighted", 1.0),), explanation="the LLM's reading", model=self.name
        )


class FakeEmotion:
    """Stands in for EmotionService (its models are tested elsewhere): a fixed fast estimate."""

    whole_frames = None
    idle = True

    def __init__(self, refiner: FakeRefiner | None = None, interim_s: float | None = None) -> None:
        self.refiner = refiner
        self.settings = EmotionSettings(interim_s=interim_s)
        self.requests: list[UtteranceInput] = []
        self.conversations: list[tuple[tuple[str, str] | None, bool]] = []

    async def estimate(
        self,
        utterance: UtteranceInput,
        speaker: SpeakerBaseline,
        *,
        conversation: tuple[str, str] | None = None,
        final: bool = True,
    ) -> tuple[Clues, EmotionEstimate]:
        self.requests.append(utterance)
        self.conversations.append((conversation, final))
        clues = Clues(utterance.utterance, utterance.t0, utterance.t1, None, None, None)
        fast = EmotionEstimate(
            labels=(("content", 0.7), ("calm", 0.3)),
            valence=0.4,
            arousal=-0.1,
            families={},
            explanation="the fast reading",
            model="fake-fast",
            votes=(),
        )
        return clues, fast


def seen(index: int) -> SeenUtterance:
    pcm = np.zeros(16_000, np.float32)
    utterance = ClosedUtterance(index, 1.0 + index, 2.0 + index, pcm, 0.8 + index, "silence")
    return SeenUtterance(f"alice-{index}", utterance, Transcript("so good", (), "en"), None)


async def estimate_chain(events: Events, emotion: FakeEmotion) -> Estimate:
    estimate = Estimate(events.context(), emotion)  # type: ignore[arg-type]
    if emotion.refiner is not None:
        estimate.then(Refine(events.context(), emotion.refiner))  # type: ignore[arg-type]
    return estimate


async def test_the_fast_estimate_comes_first_then_the_llm_refinement_as_final() -> None:
    events = Events()
    estimate = await estimate_chain(events, FakeEmotion(FakeRefiner()))
    await estimate.process(seen(0))
    await estimate.process(EndOfStream())
    fast, final = events.of_type("emotion")
    assert (fast["final"], fast["model"]) == (False, "fake-fast")
    assert (final["final"], final["model"], final["labels"][0]["label"]) == (True, "llm:fake", "delighted")
    assert final["clues"] == fast["clues"]


async def test_a_failed_refinement_is_an_llm_failed_error_and_the_fast_estimate_stands_as_final() -> None:
    events = Events()
    estimate = await estimate_chain(events, FakeEmotion(FakeRefiner(fails=True)))
    await estimate.process(seen(0))
    await estimate.process(EndOfStream())
    assert events.types() == ["emotion", "error", "emotion"]
    fast, error, final = events.messages
    assert error["code"] == "llm_failed" and "unparsable answer" in error["message"]
    assert error["utterance"] == "alice-0"
    assert fast["final"] is False and final["final"] is True
    assert {k: v for k, v in final.items() if k not in ("seq", "ts", "final")} == {
        k: v for k, v in fast.items() if k not in ("seq", "ts", "final")
    }


async def test_an_overloaded_llm_is_skipped_and_counted_and_the_fast_estimate_is_final() -> None:
    events, refiner = Events(), FakeRefiner(overloaded=True)
    skipped = metrics.REGISTRY.get_sample_value("microemo_llm_skipped_total") or 0.0
    estimate = await estimate_chain(events, FakeEmotion(refiner))
    await estimate.process(seen(0))
    await estimate.process(EndOfStream())
    (only,) = events.of_type("emotion")
    assert only["final"] is True and only["model"] == "fake-fast" and refiner.refined == []
    assert metrics.REGISTRY.get_sample_value("microemo_llm_skipped_total") == skipped + 1


# -- faces: an utterance's window waits for the analysis to reach its end, for a bounded time ---------------
class SlowAnalyzer:
    """Takes `seconds` per frame, and none at all until `started` is set."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = threading.Event()

    def analyze(self, frame_rgb: np.ndarray, t: float) -> list[FaceObservation]:
        self.started.wait(10)
        time.sleep(self.seconds)
        return []

    def close(self) -> None:
        self.started.set()


def video_frame(index: int, fps: int = 10) -> av.VideoFrame:
    frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
    frame.pts, frame.time_base = index * 90_000 // fps, Fraction(1, 90_000)
    return frame


def heard(t0: float, t1: float) -> HeardUtterance:
    utterance = ClosedUtterance(0, t0, t1, np.zeros(16_000, np.float32), t0, "silence")
    empty = np.zeros(0)
    return HeardUtterance("alice-0", utterance, empty, empty, Transcript("hello", (), "en"))


async def face_event_after(
    analyzer: SlowAnalyzer, monkeypatch: pytest.MonkeyPatch, catch_up_s: float
) -> tuple:
    """Offer 8 frames (0.0-0.7 s) at once, then ask for the window of an utterance ending at 0.7 s."""
    monkeypatch.setattr(stage, "make_face_analyzer", lambda *args: analyzer)
    events = Events()
    video = VideoFrames(events.context(), VideoSettings(analysis_fps=10, queue_frames=8), None)
    await video.open()
    faces = FaceWindows(events.context(), video, catch_up_s=catch_up_s)
    collect = Collect()
    faces.then(collect)
    try:
        for index in range(8):
            await video.process(video_frame(index))
        analyzer.started.set()
        await faces.process(heard(0.0, 0.7))
        assert video.analysis is not None
        analysed_until, idle = video.analysis.analysed_until, video.analysis.idle
    finally:
        await video.process(EndOfStream())
    (face,) = events.of_type("face")
    return face, collect.frames[0], analysed_until, idle


async def test_the_face_window_waits_for_the_analysis_to_reach_the_utterance_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    face, seen_frame, analysed_until, idle = await face_event_after(SlowAnalyzer(0.05), monkeypatch, 5.0)
    # every frame up to the utterance's end was taken by the analysis before the window was read (the last may
    # still be in analysis: VideoAnalysis.idle means no frame is queued); without the wait, 8 frames at 50 ms
    # each would still be queued
    assert idle and analysed_until >= 0.6
    assert face["utterance"] == "alice-0" and face["present"] == 0.0
    assert isinstance(seen_frame, SeenUtterance) and seen_frame.window is not None


async def test_the_face_window_waits_no_longer_than_the_catch_up_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    face, _, analysed_until, idle = await face_event_after(SlowAnalyzer(1.0), monkeypatch, 0.3)
    # 8 frames at 1 s each: the face event gave up waiting while frames were still queued
    assert analysed_until < 0.6 and not idle
    assert face["t1"] == 0.7


# -- a whole session: the end of the stream drains every stage in order, then the leave ---------------------
class RecordedAudio(MediaStreamTrack):
    """A recording served as an audio track, as fast as it is read; ends like a peer that hangs up."""

    kind = "audio"

    def __init__(self, samples: np.ndarray, rate: int) -> None:
        super().__init__()
        self._pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
        self._rate, self._at = rate, 0

    async def recv(self) -> av.AudioFrame:  # type: ignore[override]
        await asyncio.sleep(0)
        if self._at >= len(self._pcm):
            raise MediaStreamError
        step = self._rate // 50
        frame = av.AudioFrame.from_ndarray(
            self._pcm[None, self._at : self._at + step], format="s16", layout="mono"
        )
        frame.sample_rate, frame.pts, frame.time_base = self._rate, self._at, Fraction(1, self._rate)
        self._at += step
        return frame


async def test_the_end_of_stream_transcribes_every_utterance_and_awaits_the_llm_before_the_leave(
    speech: Speech,
) -> None:
    events = Events()
    transcriber = RecordingTranscriber(delay_s=0.3)  # slower than the audio: utterances queue up
    asr = TranscriptionService(transcriber)
    refiner = FakeRefiner(delay_s=0.5)
    parts = PipelineParts(
        events.hub,
        SileroModel(),
        asr,
        AudioSettings(),
        VideoSettings(enabled=False),
        FakeEmotion(refiner),  # type: ignore[arg-type]
    )
    cut = (
        speech.spans[1][0] + speech.spans[1][1]
    ) / 2  # the peer leaves in the middle of the second sentence
    session = build_session(
        parts, call="call-1", participant="alice", session_id="s1", clock=FileClock(), media_end_reason="gone"
    )
    session.add_track(RecordedAudio(speech.samples[: round(cut * SPEECH_RATE)], SPEECH_RATE))
    session.connected()
    while not session.closed:  # the track's end closes the session
        await asyncio.sleep(0.05)
    await asyncio.wait_for(session.close("ignored: already closing"), 30)
    await asr.close()

    types = events.types()
    assert types[0] == "participant.join" and types[-1] == "participant.leave"
    assert events.messages[-1]["reason"] == "gone"
    assert [m["seq"] for m in events.messages] == list(range(1, len(types) + 1))
    first, second = events.of_type("utterance")
    assert (first["closed_by"], second["closed_by"]) == ("silence", "flush")
    for utterance in (first, second):
        mine = [m["type"] for m in events.messages if m.get("utterance") == utterance["utterance"]]
        assert mine == ["utterance", "emotion", "emotion"]  # the fast estimate, then the LLM's final one
    assert refiner.refined == ["alice-0", "alice-1"]
    assert types.index("speech.end") < types.index("utterance")
