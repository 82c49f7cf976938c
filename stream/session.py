"""One participant of a call: its peer connection's tracks through the audio stages, events to the hub."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from stream import metrics
from stream.audio.asr import TranscriptionService
from stream.audio.resample import Resampler
from stream.audio.segmenter import ClosedUtterance, Segmenter, SegmentEvent, SpeechEnded, SpeechStarted
from stream.audio.vad import SileroModel
from stream.config import VadSettings
from stream.events import (
    CallEvent,
    ErrorEvent,
    ParticipantJoin,
    ParticipantLeave,
    SpeechEnd,
    SpeechStart,
    UtteranceEvent,
    WordTiming,
)
from stream.hub import Hub

log = logging.getLogger(__name__)
_DRAIN_TIMEOUT_S = 0.5


class ParticipantSession:
    """Owns one RTCPeerConnection. Media time counts from the participant's first frame on any track."""

    def __init__(
        self,
        *,
        call: str,
        participant: str,
        session_id: str,
        pc: RTCPeerConnection,
        hub: Hub,
        vad_model: SileroModel,
        asr: TranscriptionService,
        vad: VadSettings,
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
        self._on_closed = on_closed
        self._clock_start: float | None = None  # monotonic wall time of the first frame
        self._media_tasks: list[asyncio.Task[None]] = []
        self._closed_utterances: asyncio.Queue[ClosedUtterance | None] = asyncio.Queue()
        self._transcribing = asyncio.create_task(self._transcribe_loop())
        self._joined = False
        self._closing: asyncio.Task[None] | None = None
        self.tracks: list[str] = []
        self.log = logging.LoggerAdapter(log, {"call": call, "participant": participant})

    # -- wiring -----------------------------------------------------------------------------------
    def add_track(self, track: MediaStreamTrack) -> None:
        self.tracks.append(track.kind)
        consume = self._consume_audio if track.kind == "audio" else self._drain_video
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
    def _media_time_offset(self) -> float:
        now = time.monotonic()
        if self._clock_start is None:
            self._clock_start = now
        return now - self._clock_start

    async def _consume_audio(self, track: MediaStreamTrack) -> None:
        resampler: Resampler | None = None
        vad = self._vad_model.stream()
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if resampler is None:
                resampler = Resampler(t_offset=self._media_time_offset())
            for chunk in resampler.push(frame):  # type: ignore[arg-type]
                for scored, speech_prob in vad.push(chunk):
                    for event in self._segmenter.push(scored.t, scored.samples, speech_prob):
                        self._on_segment(event)

    async def _drain_video(self, track: MediaStreamTrack) -> None:
        # Frames must be pulled, or aiortc queues them without bound; the video path analyses them.
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return
            self._media_time_offset()

    def _media_task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.log.error("media stage failed: %r", task.exception())
            self._publish(self._error("media_failed", f"media processing failed: {task.exception()!r}"))
        if all(t.done() for t in self._media_tasks) and not self.closed:
            self.close("hangup")

    # -- segments and transcripts -----------------------------------------------------------------
    def _on_segment(self, event: SegmentEvent) -> None:
        if isinstance(event, SpeechStarted):
            self._publish(SpeechStart(call=self.call, participant=self.participant, t0=event.t))
        elif isinstance(event, SpeechEnded):
            self._publish(SpeechEnd(call=self.call, participant=self.participant, t0=event.t0, t1=event.t1))
            self._observe_latency("speech.end", event.t1)
        else:
            self._closed_utterances.put_nowait(event)

    def utterance_id(self, index: int) -> str:
        return f"{self.participant}-{index}"

    async def _transcribe_loop(self) -> None:
        while (utterance := await self._closed_utterances.get()) is not None:
            uid = self.utterance_id(utterance.index)
            try:
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
        if self._joined:
            self._publish(
                ParticipantLeave(
                    call=self.call, participant=self.participant, tracks=self._kinds(), reason=reason
                )
            )
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
        if self._clock_start is not None:
            metrics.STAGE_LATENCY.labels(stage).observe(time.monotonic() - self._clock_start - speech_end_t)

    # -- helpers ----------------------------------------------------------------------------------
    def _kinds(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.tracks)))

    def _error(self, code: str, message: str, utterance: str | None = None) -> ErrorEvent:
        return ErrorEvent(
            call=self.call, participant=self.participant, code=code, message=message, utterance=utterance
        )

    def _publish(self, event: CallEvent) -> None:
        self._hub.publish(event)
