"""Audio frames → 16 kHz chunks → speech probabilities → speech.start / speech.end and closed utterances."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import av
import numpy as np

from model.audio.segmenter import Segmenter, SegmentEvent, SpeechEnded, SpeechStarted
from model.audio.vad import SAMPLE_RATE, SileroModel
from model.settings import VadSettings
from stream import metrics
from stream.clock import MediaClock, pts_seconds
from stream.events import SpeechEnd, SpeechStart
from stream.frames import (
    ClosedUtterance,
    MediaStalled,
    PcmChunk,
    ScoredChunk,
    ScoredUtterance,
    SpeechPaused,
    SpeechSoFar,
)
from stream.overload import Shedder
from stream.pipeline import ParticipantContext, Processor
from stream.speech.resample import Resampler

_SPEECH_HISTORY = 4096  # VAD chunks (~130 s) whose speech probabilities are kept for the utterances to come


class Resample(Processor[av.AudioFrame, PcmChunk]):
    """One audio track's frames → 16 kHz mono chunks on the participant's media clock. After a stall, the
    frames that come back are placed on the clock anew (never before the audio already heard)."""

    def __init__(self, clock: MediaClock) -> None:
        super().__init__()
        self._clock = clock
        self._resampler: Resampler | None = None
        self._end_t = 0.0  # media time where the audio heard so far ends

    async def finish(self) -> None:
        self._resampler = None

    async def stalled(self, frame: MediaStalled) -> None:
        self._resampler = None
        await self.push(frame)

    async def handle(self, frame: av.AudioFrame) -> None:
        if self._resampler is None:
            t_offset = max(self._end_t, self._clock.track_offset(pts_seconds(frame)))
            self._resampler = Resampler(t_offset=t_offset)
        for chunk in self._resampler.push(frame):
            self._end_t = chunk.t + len(chunk.samples) / SAMPLE_RATE
            await self.push(chunk)


class ScoreSpeech(Processor[PcmChunk, ScoredChunk]):
    """Chunks of any length → 32 ms chunks with their speech probability (silero, cheap enough for the loop).
    A stall starts the VAD afresh: its state and part-chunk belong to audio that no longer continues."""

    def __init__(
        self, model: SileroModel, clock: MediaClock | None = None, shedder: Shedder | None = None
    ) -> None:
        """clock: a live participant's, to measure how late the audio comes (microemo_audio_lag_seconds),
        which the shedder is told (late audio sheds other work)."""
        super().__init__()
        self._model = model
        self._vad = model.stream()
        self._clock = clock if clock is not None and clock.realtime else None
        self._shedder = shedder

    async def stalled(self, frame: MediaStalled) -> None:
        self._vad = self._model.stream()
        await self.push(frame)

    async def handle(self, frame: PcmChunk) -> None:
        for chunk, speech_prob in self._vad.push(frame):
            if self._clock is not None:
                lag = self._clock.since_media_time(chunk.t + len(chunk.samples) / SAMPLE_RATE)
                if lag is not None:
                    metrics.AUDIO_LAG.observe(max(0.0, lag))
                    if self._shedder is not None:
                        self._shedder.note_audio_lag(lag)
            await self.push(ScoredChunk(chunk.t, chunk.samples, speech_prob))


class Segment(Processor[ScoredChunk, SpeechPaused | SpeechSoFar | ScoredUtterance]):
    """Publishes speech.start and speech.end; passes on pauses (for early transcription), the speech so far every
    `interim_s` (for interim transcripts) and closed utterances. At the end of the stream, or when it stalls,
    the speech still open is closed."""

    def __init__(
        self,
        context: ParticipantContext,
        vad: VadSettings,
        interim_s: float | None = None,
        interim_lead: Callable[[], float] | None = None,
    ) -> None:
        """interim_lead: how long an interim transcript takes now (it is asked for that much early)."""
        super().__init__(context)
        self._context = context
        self._segmenter = Segmenter(vad, interim_s)
        self._interim_lead = interim_lead
        self._speech: deque[tuple[float, float]] = deque(maxlen=_SPEECH_HISTORY)  # (media time, probability)

    async def finish(self) -> None:
        for event in self._segmenter.flush("flush"):
            await self._segment(event)

    async def stalled(self, frame: MediaStalled) -> None:
        for event in self._segmenter.flush("stall"):
            await self._segment(event)

    async def handle(self, frame: ScoredChunk) -> None:
        self._speech.append((frame.t, frame.speech_prob))
        if self._interim_lead is not None:
            self._segmenter.interim_lead_s = self._interim_lead()
        for event in self._segmenter.push(frame.t, frame.samples, frame.speech_prob):
            await self._segment(event)

    async def _segment(self, event: SegmentEvent) -> None:
        context = self._context
        if isinstance(event, SpeechStarted):
            context.publish(SpeechStart(call=context.call, participant=context.participant, t0=event.t))
        elif isinstance(event, SpeechEnded):
            context.publish(
                SpeechEnd(call=context.call, participant=context.participant, t0=event.t0, t1=event.t1)
            )
            context.observe_latency("speech.end", event.t1)
        elif isinstance(event, SpeechPaused | SpeechSoFar):
            await self.push(event)
        else:
            await self.push(self._scored(event))

    def _scored(self, utterance: ClosedUtterance) -> ScoredUtterance:
        speech = np.array([p for p in self._speech if utterance.t0 <= p[0] <= utterance.t1]).reshape(-1, 2)
        return ScoredUtterance(utterance, speech[:, 0], speech[:, 1])
