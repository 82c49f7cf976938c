"""Speech probabilities → speech.start / speech.end / ClosedUtterance, decided on the fly (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

import numpy as np

from stream.audio.resample import SAMPLE_RATE


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    t: float  # media time (s) where speech began


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    t0: float
    t1: float  # media time (s) where speech ended (the start of the closing silence)


@dataclass(frozen=True, slots=True)
class ClosedUtterance:
    index: int  # 0, 1, 2 ... per participant
    t0: float  # speech start, media time (s)
    t1: float  # speech end, media time (s)
    pcm: np.ndarray  # (n,) float32 16 kHz: [t0 - pad, t1 + pad], clipped to the audio heard
    pcm_t0: float  # media time of pcm[0]
    reason: Literal["silence", "max_length", "flush"]
    continues: int | None = None  # index of the utterance this one continues after a forced close


SegmentEvent = SpeechStarted | SpeechEnded | ClosedUtterance


class _State(Enum):
    IDLE = "idle"
    CANDIDATE = "candidate"  # voiced, but not yet for min_speech_ms
    SPEECH = "speech"


class Segmenter:
    """Hysteresis over speech probabilities: opens at `threshold`, closes after `min_silence_ms` below
    `neg_threshold`. Blips shorter than `min_speech_ms` produce nothing; speech longer than
    `max_utterance_s` is force-closed and the next utterance marked as its continuation."""

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        neg_threshold: float = 0.35,
        min_speech_ms: int = 250,
        min_silence_ms: int = 500,
        speech_pad_ms: int = 200,
        max_utterance_s: float = 20.0,
    ) -> None:
        self._threshold = threshold
        self._neg_threshold = neg_threshold
        self._min_speech_s = min_speech_ms / 1000
        self._min_silence_s = min_silence_ms / 1000
        self._pad_s = speech_pad_ms / 1000
        self._max_utterance_s = max_utterance_s
        self._state = _State.IDLE
        self._speech_t0 = 0.0
        self._silence_t0: float | None = None
        self._below_t0: float | None = None  # start of the current run of chunks under `threshold`
        self._next_index = 0
        self._continues: int | None = None
        self._audio = _AudioBuffer()

    @property
    def in_speech(self) -> bool:
        return self._state is _State.SPEECH

    def push(self, t: float, samples: np.ndarray, speech_prob: float) -> list[SegmentEvent]:
        """Feed one chunk of audio (starting at media time t) and its speech probability."""
        self._audio.append(t, samples)
        end = t + len(samples) / SAMPLE_RATE
        if self._state is _State.IDLE:
            if speech_prob < self._threshold:
                self._audio.keep_after(end - self._pad_s)
                return []
            self._state, self._speech_t0, self._silence_t0, self._below_t0 = _State.CANDIDATE, t, None, None

        if speech_prob >= self._threshold:
            self._silence_t0 = self._below_t0 = None
        else:
            if self._below_t0 is None:
                self._below_t0 = t
            if speech_prob < self._neg_threshold and self._silence_t0 is None:
                # the speech ended where the probability first fell under the threshold, not where the
                # hysteresis finally gave up on it: silero's probability trails off over a chunk or two
                self._silence_t0 = self._below_t0

        events: list[SegmentEvent] = []
        if (
            self._state is _State.CANDIDATE
            and self._silence_t0 is None
            and end - self._speech_t0 >= self._min_speech_s
        ):
            self._state = _State.SPEECH
            events.append(SpeechStarted(self._speech_t0))
        if self._silence_t0 is not None and end - self._silence_t0 >= self._min_silence_s:
            if self._state is _State.SPEECH:
                events += self._close(self._silence_t0, "silence")
            self._state = _State.IDLE
            self._audio.keep_after(end - self._pad_s)
        elif self._state is _State.SPEECH and end - self._speech_t0 >= self._max_utterance_s:
            closed = self._close(end, "max_length")
            self._continues = closed[-1].index  # type: ignore[union-attr]
            self._speech_t0, self._silence_t0, self._below_t0 = end, None, None
            self._audio.keep_after(end - self._pad_s)
            events += [*closed, SpeechStarted(end)]
        return events

    def flush(self) -> list[SegmentEvent]:
        """The stream ended (peer gone): close the speech heard so far; an unconfirmed blip is dropped."""
        events: list[SegmentEvent] = []
        if self._state is _State.SPEECH:
            t1 = self._silence_t0 if self._silence_t0 is not None else self._audio.end
            events = self._close(t1, "flush")
        self._state = _State.IDLE
        self._audio.keep_after(self._audio.end)
        return events

    def _close(self, t1: float, reason: Literal["silence", "max_length", "flush"]) -> list[SegmentEvent]:
        pcm_t0, pcm = self._audio.slice(self._speech_t0 - self._pad_s, t1 + self._pad_s)
        utterance = ClosedUtterance(
            index=self._next_index,
            t0=self._speech_t0,
            t1=t1,
            pcm=pcm,
            pcm_t0=pcm_t0,
            reason=reason,
            continues=self._continues,
        )
        self._next_index += 1
        self._continues = None
        return [SpeechEnded(self._speech_t0, t1), utterance]


class _AudioBuffer:
    """Contiguous recent audio with the media time of its first sample."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self._start = 0.0
        self._length = 0

    @property
    def end(self) -> float:
        return self._start + self._length / SAMPLE_RATE

    def append(self, t: float, samples: np.ndarray) -> None:
        if self._length == 0:
            self._start = t
        self._chunks.append(samples)
        self._length += len(samples)

    def keep_after(self, t: float) -> None:
        """Drop whole chunks that end before t."""
        while self._chunks and self._start + len(self._chunks[0]) / SAMPLE_RATE <= t:
            dropped = self._chunks.pop(0)
            self._start += len(dropped) / SAMPLE_RATE
            self._length -= len(dropped)

    def slice(self, t0: float, t1: float) -> tuple[float, np.ndarray]:
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.float32)
        i0 = max(0, round((t0 - self._start) * SAMPLE_RATE))
        i1 = min(len(audio), round((t1 - self._start) * SAMPLE_RATE))
        return self._start + i0 / SAMPLE_RATE, audio[i0 : max(i0, i1)].copy()
