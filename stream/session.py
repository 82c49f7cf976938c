"""One participant of a call: its peer connection's tracks through the audio stages, events to the hub."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from model.cues import Clues, UtteranceInput
from model.estimator import EmotionEstimate
from model.prosody import SpeakerBaseline
from stream import metrics
from stream.audio.asr import Transcript, TranscriptionService
from stream.audio.resample import Resampler
from stream.audio.segmenter import (
    ClosedUtterance,
    Segmenter,
    SegmentEvent,
    SpeechEnded,
    SpeechPaused,
    SpeechStarted,
)
from stream.audio.vad import SileroModel
from stream.clock import LiveClock, MediaClock
from stream.config import VadSettings, VideoSettings
from stream.emotion import EmotionStage, face_evidence
from stream.events import (
    CallEvent,
    EmotionEvent,
    ErrorEvent,
    FaceEvent,
    Label,
    ParticipantJoin,
    ParticipantLeave,
    SpeechEnd,
    SpeechStart,
    UtteranceEvent,
    WordTiming,
)
from stream.hub import Hub
from stream.video.micro import FaceWindow
from stream.video.stage import VideoAnalysis

log = logging.getLogger(__name__)
_DRAIN_TIMEOUT_S = 0.5
_VIDEO_CATCH_UP_S = 1.0  # how long an utterance's face window waits for frames still in analysis
_NO_FACE: dict[str, Any] = {"track": None, "present": 0.0, "regions": {}, "micro": []}


class ParticipantSession:
    """Owns one RTCPeerConnection. Media time counts from the participant's first frame on any track."""

    def __init__(
        self,
        *,
        call: str,
        participant: str,
        session_id: str,
        pc: RTCPeerConnection | None,
        hub: Hub,
        vad_model: SileroModel,
        asr: TranscriptionService,
        vad: VadSettings,
        video: VideoSettings | None = None,
        emotion: EmotionStage | None = None,
        clock: MediaClock | None = None,
        media_end_reason: str = "hangup",
        on_closed: Callable[[ParticipantSession], Awaitable[None] | None] | None = None,
    ) -> None:
        self.call, self.participant, self.id = call, participant, session_id
        self.pc = pc
        self._hub = hub
        self._vad_model = vad_model
        self._asr = asr
        self._segmenter = Segmenter(
            threshold=vad.threshold,
            neg_threshold=vad.neg_threshold,
            min_speech_ms=vad.min_speech_ms,
            min_silence_ms=vad.min_silence_ms,
            speech_pad_ms=vad.speech_pad_ms,
            max_utterance_s=vad.max_utterance_s,
        )
        self._video_settings = video if video is not None and video.enabled else None
        self._video: VideoAnalysis | None = None
        # (media time, speech probability) of recent VAD chunks: which face is speaking follows the VAD
        self._speech_probs: deque[tuple[float, float]] = deque(maxlen=4096)
        self._emotion = emotion
        self._speaker = SpeakerBaseline()  # this participant's usual pitch and loudness
        self._on_closed = on_closed
        self._clock: MediaClock = clock or LiveClock()
        self._media_end_reason = media_end_reason
        self._media_tasks: list[asyncio.Task[None]] = []
        self._closed_utterances: asyncio.Queue[ClosedUtterance | None] = asyncio.Queue()
        # a transcription started at a pause, keyed by (utterance index, t1): used if that pause closes it
        self._early: tuple[tuple[int, float], asyncio.Task[Transcript]] | None = None
        self._transcribing = asyncio.create_task(self._transcribe_loop())
        self._refining: set[asyncio.Task[None]] = set()  # LLM refinements under way
        self._joined = False
        self._closing: asyncio.Task[None] | None = None
        self.tracks: list[str] = []
        self.log = logging.LoggerAdapter(log, {"call": call, "participant": participant})

    # -- wiring -----------------------------------------------------------------------------------
    def add_track(self, track: MediaStreamTrack) -> None:
        self.tracks.append(track.kind)
        consume = self._consume_audio if track.kind == "audio" else self._consume_video
        task = asyncio.create_task(consume(track))
        task.add_done_callback(self._media_task_done)
        self._media_tasks.append(task)

    def connected(self) -> None:
        if not self._joined:
            self._joined = True
            self._publish(ParticipantJoin(call=self.call, participant=self.participant, tracks=self._kinds()))

    def close(self, reason: str) -> asyncio.Task[None]:
        """Idempotent. Closes the speech heard so far, transcribes it, then announces the leave."""
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(reason))
        return self._closing

    @property
    def closed(self) -> bool:
        return self._closing is not None

    # -- media ------------------------------------------------------------------------------------
    async def _consume_audio(self, track: MediaStreamTrack) -> None:
        resampler: Resampler | None = None
        vad = self._vad_model.stream()
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if resampler is None:
                resampler = Resampler(t_offset=self._clock.track_offset(_pts_seconds(frame)))
            for chunk in resampler.push(frame):  # type: ignore[arg-type]
                for scored, speech_prob in vad.push(chunk):
                    self._speech_probs.append((scored.t, speech_prob))
                    for event in self._segmenter.push(scored.t, scored.samples, speech_prob):
                        self._on_segment(event)

    async def _consume_video(self, track: MediaStreamTrack) -> None:
        # Frames are pulled even when video analysis is off, or aiortc queues them without bound.
        if self._video_settings is not None:
            name = f"{self.call}/{self.participant}"
            # Whole frames are kept only when the LLM stage's visual encoder will read them
            whole_frames = self._emotion.whole_frames if self._emotion is not None else None
            self._video = await asyncio.to_thread(VideoAnalysis, self._video_settings, name, whole_frames)
        first_pts_s: float | None = None
        t_offset = 0.0
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            pts_s = _pts_seconds(frame)
            if first_pts_s is None:
                first_pts_s, t_offset = pts_s, self._clock.track_offset(pts_s)
            if self._video is None:
                continue
            t = t_offset + pts_s - first_pts_s
            if not self._clock.realtime:  # a file waits for the analysis instead of dropping frames
                while self._video.backlog >= self._video_settings.queue_frames:  # type: ignore[union-attr]
                    await asyncio.sleep(0.005)
            self._video.offer(frame, t)  # type: ignore[arg-type]

    def _media_task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.log.error("media stage failed: %r", task.exception())
            self._publish(self._error("media_failed", f"media processing failed: {task.exception()!r}"))
        if all(t.done() for t in self._media_tasks) and not self.closed:
            self.close(self._media_end_reason)

    # -- segments and transcripts -----------------------------------------------------------------
    def _on_segment(self, event: SegmentEvent) -> None:
        if isinstance(event, SpeechStarted):
            self._publish(SpeechStart(call=self.call, participant=self.participant, t0=event.t))
        elif isinstance(event, SpeechEnded):
            self._publish(SpeechEnd(call=self.call, participant=self.participant, t0=event.t0, t1=event.t1))
            self._observe_latency("speech.end", event.t1)
        elif isinstance(event, SpeechPaused):
            self._transcribe_early(event.utterance)
        else:
            self._closed_utterances.put_nowait(event)

    def _transcribe_early(self, utterance: ClosedUtterance) -> None:
        """Start transcribing at a pause, while the segmenter waits to see if the silence closes the utterance.

        Saves up to min_silence_ms - speech_pad_ms of transcript latency. Only when the ASR workers are idle and
        the clock is live (a file needs no head start): a pause that does not close wastes idle compute only.
        """
        if self._early is not None:
            self._early[1].cancel()  # speech resumed after the last pause: that transcript is not needed
            self._early = None
        if self._clock.realtime and self._asr.backlog == 0:
            task = asyncio.create_task(self._asr.transcribe(utterance.pcm, utterance.pcm_t0))
            self._early = ((utterance.index, utterance.t1), task)

    def _early_transcript(self, utterance: ClosedUtterance) -> asyncio.Task[Transcript] | None:
        early, self._early = self._early, None
        if early is None:
            return None
        if early[0] != (utterance.index, utterance.t1):
            early[1].cancel()
            return None
        return early[1]

    def utterance_id(self, index: int) -> str:
        return f"{self.participant}-{index}"

    async def _transcribe_loop(self) -> None:
        while (utterance := await self._closed_utterances.get()) is not None:
            uid = self.utterance_id(utterance.index)
            early = self._early_transcript(utterance)
            try:
                if early is not None:
                    transcript = await early
                else:
                    transcript = await self._asr.transcribe(utterance.pcm, utterance.pcm_t0)
            except Exception as exc:
                self.log.exception("transcription failed for %s", uid)
                self._publish(self._error("asr_failed", f"transcription failed: {exc!r}", uid))
                continue
            self._publish(
                UtteranceEvent(
                    call=self.call,
                    participant=self.participant,
                    utterance=uid,
                    t0=utterance.t0,
                    t1=utterance.t1,
                    text=transcript.text,
                    words=tuple(WordTiming(w.word, w.start, w.end, w.prob) for w in transcript.words),
                    lang=transcript.lang,
                    continues=None if utterance.continues is None else self.utterance_id(utterance.continues),
                    closed_by=utterance.reason,
                )
            )
            self._observe_latency("utterance", utterance.t1)
            window = await self._emit_face(uid, utterance) if self._video_settings is not None else None
            if self._emotion is not None:
                await self._emit_emotion(uid, utterance, transcript, window)

    async def _emit_face(self, uid: str, utterance: ClosedUtterance) -> FaceWindow | None:
        """The face evidence over the utterance, once the frames up to its end have been analysed."""
        fields = _NO_FACE
        window = None
        video = self._video
        if video is not None:
            deadline = time.monotonic() + _VIDEO_CATCH_UP_S
            while video.analysed_until < utterance.t1 and not video.idle and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            probs = np.array([p for p in self._speech_probs if utterance.t0 <= p[0] <= utterance.t1]).reshape(
                -1, 2
            )
            window = await asyncio.to_thread(
                video.window, utterance.t0, utterance.t1, probs[:, 0], probs[:, 1]
            )
            fields = window.to_event_fields()
        self._publish(
            FaceEvent(
                call=self.call,
                participant=self.participant,
                utterance=uid,
                t0=utterance.t0,
                t1=utterance.t1,
                **fields,
            )
        )
        return window

    async def _emit_emotion(
        self, uid: str, utterance: ClosedUtterance, transcript: Transcript, window: FaceWindow | None
    ) -> None:
        assert self._emotion is not None
        request = UtteranceInput(
            utterance=uid,
            t0=utterance.t0,
            t1=utterance.t1,
            text=transcript.text,
            words=tuple(
                (w.word, w.start - utterance.pcm_t0, w.end - utterance.pcm_t0) for w in transcript.words
            ),
            pcm=utterance.pcm,
            face=face_evidence(window) if window is not None else None,
            voice=transcript.voice,
        )
        try:
            clues, estimate = await self._emotion.estimate(request, self._speaker)
        except Exception as exc:
            self.log.exception("emotion estimate failed for %s", uid)
            self._publish(self._error("emotion_failed", f"emotion estimate failed: {exc!r}", uid))
            return
        refiner = self._emotion.refiner
        refine = refiner is not None and not refiner.overloaded
        if refiner is not None and not refine:
            metrics.LLM_SKIPPED.inc()  # the fast estimate stands: better late-free than a growing backlog
        self._publish(self._emotion_event(uid, utterance, clues, estimate, final=not refine))
        self._observe_latency("emotion", utterance.t1)
        if refine:
            task = asyncio.create_task(self._refine(uid, utterance, transcript.text, clues, estimate, window))
            self._refining.add(task)
            task.add_done_callback(self._refining.discard)

    async def _refine(
        self,
        uid: str,
        utterance: ClosedUtterance,
        text: str,
        clues: Clues,
        estimate: EmotionEstimate,
        window: FaceWindow | None,
    ) -> None:
        """The LLM's final word on an utterance; when it fails, an error and the fast estimate as final."""
        assert self._emotion is not None and self._emotion.refiner is not None
        try:
            refined = await self._emotion.refiner.refine(self.call, uid, text, estimate, window)
        except Exception as exc:
            self.log.warning("LLM refinement failed for %s: %r", uid, exc)
            self._publish(self._error("llm_failed", f"LLM refinement failed, fast estimate kept: {exc}", uid))
            refined = estimate
        self._publish(self._emotion_event(uid, utterance, clues, refined, final=True))
        self._observe_latency("emotion_final", utterance.t1)

    def _emotion_event(
        self, uid: str, utterance: ClosedUtterance, clues: Clues, estimate: EmotionEstimate, *, final: bool
    ) -> EmotionEvent:
        return EmotionEvent(
            call=self.call,
            participant=self.participant,
            utterance=uid,
            t0=utterance.t0,
            t1=utterance.t1,
            labels=tuple(Label(word, score) for word, score in estimate.labels),
            valence=estimate.valence,
            arousal=estimate.arousal,
            explanation=estimate.explanation,
            clues=clues.to_event(),
            final=final,
            model=estimate.model,
        )

    # -- ending -----------------------------------------------------------------------------------
    async def _close(self, reason: str) -> None:
        # Frames the peer sent before it went are still queued in aiortc's track: let them through first.
        if self._media_tasks:
            await asyncio.wait(self._media_tasks, timeout=_DRAIN_TIMEOUT_S)
        for task in self._media_tasks:
            task.cancel()
        await asyncio.gather(*self._media_tasks, return_exceptions=True)
        for event in self._segmenter.flush():
            self._on_segment(event)
        self._closed_utterances.put_nowait(None)
        await self._transcribing  # every closed utterance is transcribed and emitted before the leave
        if self._refining:
            await asyncio.gather(*self._refining, return_exceptions=True)  # and its LLM answer too
        if self._video is not None:
            await asyncio.to_thread(self._video.close)
        if self._joined:
            self._publish(
                ParticipantLeave(
                    call=self.call, participant=self.participant, tracks=self._kinds(), reason=reason
                )
            )
        if self.pc is not None:
            try:
                await self.pc.close()
            except Exception:
                self.log.exception("closing the peer connection failed")
        self.log.info("session closed (%s)", reason)
        if self._on_closed is not None:
            result = self._on_closed(self)
            if result is not None:
                await result

    def _observe_latency(self, stage: str, speech_end_t: float) -> None:
        """Wall time since the speech ended; media time maps to wall time for a live, real-time stream."""
        elapsed = self._clock.since_media_time(speech_end_t)
        if elapsed is not None:
            metrics.STAGE_LATENCY.labels(stage).observe(elapsed)

    # -- helpers ----------------------------------------------------------------------------------
    def _kinds(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.tracks)))

    def _error(self, code: str, message: str, utterance: str | None = None) -> ErrorEvent:
        return ErrorEvent(
            call=self.call, participant=self.participant, code=code, message=message, utterance=utterance
        )

    def _publish(self, event: CallEvent) -> None:
        self._hub.publish(event)


def _pts_seconds(frame: object) -> float:
    pts, time_base = getattr(frame, "pts", None), getattr(frame, "time_base", None)
    return float(pts * time_base) if pts is not None and time_base else 0.0
