"""Speech probabilities → speech.start / speech.end / ClosedUtterance, decided on the fly (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Literal

import numpy as np

from model.audio.vad import SAMPLE_RATE
from model.settings import VadSettings


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    t: float  # media time (s) where speech began


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    t0: float
    t1: float  # media time (s) where speech ended (the start of the closing silence)


CloseReason = Literal["silence", "max_length", "flush", "stall"]


@dataclass(frozen=True, slots=True)
class ClosedUtterance:
    index: int  # 0, 1, 2 ... per participant
    t0: float  # speech start, media time (s)
    t1: float  # speech end, media time (s)
    pcm: np.ndarray  # (n,) float32 16 kHz: [t0 - pad, t1 + pad], clipped to the audio heard
    pcm_t0: float  # media time of pcm[0]
    reason: CloseReason
    continues: int | None = None  # index of the utterance this one continues after a forced close


@dataclass(frozen=True, slots=True)
class SpeechPaused:
    """Speech has been silent for speech_pad_ms: the utterance, should the silence last to min_silence_ms.

    Its audio is already complete, so transcription may start now; if the silence lasts, the ClosedUtterance
    that follows has the same index, t1 and audio; if speech resumes, this one is simply never closed."""

    utterance: ClosedUtterance


@dataclass(frozen=True, slots=True)
class SpeechSoFar:
    """Speech still going on: the utterance as heard so far (t1 = now), for interim transcripts and estimates.

    Sent every `interim_s` of speech while the utterance is open; its index is the one it will close with."""

    utterance: ClosedUtterance


SegmentEvent = SpeechStarted | SpeechEnded | SpeechPaused | SpeechSoFar | ClosedUtterance


# Silero's probability trails the sound by a chunk or two: the end of speech is looked for in the audio itself,
# this far back from the first chunk the VAD heard as not speech, as where the level fell under the speech's
# loud frames by END_DROP_DB. Conservative: over a noise floor louder than that, the VAD's end stands.
END_LOOKBACK_S = 0.096
END_DROP_DB = 30.0
_LEVEL_FRAME = 160  # 10 ms


class _State(Enum):
    IDLE = "idle"
    CANDIDATE = "candidate"  # voiced, but not yet for min_speech_ms
    SPEECH = "speech"


class Segmenter:
    """Hysteresis over speech probabilities: opens at `threshold`, closes after `min_silence_ms` below
    `neg_threshold`. Blips shorter than `min_speech_ms` produce nothing; speech longer than
    `max_utterance_s` is force-closed and the next utterance marked as its continuation. While speech goes on,
    the utterance so far is sent every `interim_s` of it (None: never)."""

    def __init__(self, vad: VadSettings | None = None, interim_s: float | None = None) -> None:
        vad = vad or VadSettings()
        self._threshold = vad.threshold
        self._neg_threshold = vad.neg_threshold
        self._min_speech_s = vad.min_speech_ms / 1000
        self._min_silence_s = vad.min_silence_ms / 1000
        self._pad_s = vad.speech_pad_ms / 1000
        self._max_utterance_s = vad.max_utterance_s
        self._interim_s = interim_s
        self._interim_t = 0.0  # the last point of the interim grid (speech start + k interim_s) sent for
        # Seconds before each grid point that the speech so far is sent, so that its transcript, which takes
        # about that long, comes out on the grid (set from the measured transcription time; at most half a step)
        self.interim_lead_s = 0.0
        self._state = _State.IDLE
        self._speech_t0 = 0.0
        self._silence_t0: float | None = None
        self._below_t0: float | None = None  # start of the current run of chunks under `threshold`
        self._paused_sent = False  # SpeechPaused emitted for the current silence
        self._next_index = 0
        self._continues: int | None = None
        self._audio = _AudioBuffer()

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
            self._paused_sent = False
        else:
            if self._below_t0 is None:
                self._below_t0 = t
            if speech_prob < self._neg_threshold and self._silence_t0 is None:
                # the speech ended where the probability first fell under the threshold, not where the
                # hysteresis finally gave up on it, and within that, where the sound itself died away
                self._silence_t0 = self._sound_end(self._below_t0)

        events: list[SegmentEvent] = []
        if (
            self._state is _State.CANDIDATE
            and self._silence_t0 is None
            and end - self._speech_t0 >= self._min_speech_s
        ):
            self._state = _State.SPEECH
            self._interim_t = self._speech_t0
            events.append(SpeechStarted(self._speech_t0))
        if self._silence_t0 is not None and end - self._silence_t0 >= self._min_silence_s:
            if self._state is _State.SPEECH:
                events += self._close(self._silence_t0, "silence")
            self._state = _State.IDLE
            self._paused_sent = False
            self._audio.keep_after(end - self._pad_s)
        elif (
            self._state is _State.SPEECH
            and self._silence_t0 is not None
            and not self._paused_sent
            and end - self._silence_t0 >= self._pad_s
        ):
            self._paused_sent = True
            events.append(SpeechPaused(self._utterance(self._silence_t0, "silence")))
        elif self._state is _State.SPEECH and end - self._speech_t0 >= self._max_utterance_s:
            closed = self._close(end, "max_length")
            self._continues = closed[-1].index  # type: ignore[union-attr]
            self._speech_t0, self._silence_t0, self._below_t0, self._paused_sent = end, None, None, False
            self._interim_t = end
            self._audio.keep_after(end - self._pad_s)
            events += [*closed, SpeechStarted(end)]
        elif (
            self._state is _State.SPEECH
            and self._interim_s is not None
            and self._silence_t0 is None
            and end - self._interim_t >= self._interim_s - self._lead()
        ):
            while end - self._interim_t >= self._interim_s - self._lead():  # on a grid from the speech start
                self._interim_t += self._interim_s
            events.append(SpeechSoFar(self._utterance(end, "silence")))
        return events

    def _lead(self) -> float:
        assert self._interim_s is not None
        return min(max(0.0, self.interim_lead_s), self._interim_s / 2)

    def _sound_end(self, vad_end: float) -> float:
        """The end of the speech's sound in the END_LOOKBACK_S before `vad_end`, or `vad_end` itself."""
        _, pcm = self._audio.slice(self._speech_t0, vad_end)
        frames = len(pcm) // _LEVEL_FRAME
        if frames < 2 * round(END_LOOKBACK_S * SAMPLE_RATE / _LEVEL_FRAME):
            return vad_end  # too short to tell speech level from its tail
        pcm = pcm[len(pcm) - frames * _LEVEL_FRAME :]  # whole frames, aligned to vad_end
        level = np.sqrt(np.mean(pcm.reshape(frames, _LEVEL_FRAME).astype(np.float64) ** 2, axis=1))
        floor = np.percentile(level, 95) * 10 ** (-END_DROP_DB / 20)
        lookback = round(END_LOOKBACK_S * SAMPLE_RATE / _LEVEL_FRAME)
        tail = level[-lookback:]
        loud = np.nonzero(tail >= floor)[0]
        if len(loud) == len(tail) or floor <= 0:
            return vad_end
        last_loud = loud[-1] + 1 if len(loud) else 0  # frames of the tail up to the last loud one
        return vad_end - (len(tail) - last_loud) * _LEVEL_FRAME / SAMPLE_RATE

    def flush(self, reason: Literal["flush", "stall"] = "flush") -> list[SegmentEvent]:
        """The stream ended (peer gone) or stalled: close the speech heard so far; an unconfirmed blip is
        dropped. The audio kept so far is let go: what comes next need not follow it without a gap."""
        events: list[SegmentEvent] = []
        if self._state is _State.SPEECH:
            t1 = self._silence_t0 if self._silence_t0 is not None else self._audio.end
            events = self._close(t1, reason)
        self._state = _State.IDLE
        self._audio.clear()
        return events

    def _utterance(self, t1: float, reason: CloseReason) -> ClosedUtterance:
        pcm_t0, pcm = self._audio.slice(self._speech_t0 - self._pad_s, t1 + self._pad_s)
        return ClosedUtterance(
            index=self._next_index,
            t0=self._speech_t0,
            t1=t1,
            pcm=pcm,
            pcm_t0=pcm_t0,
            reason=reason,
            continues=self._continues,
        )

    def _close(self, t1: float, reason: CloseReason) -> list[SegmentEvent]:
        utterance = self._utterance(t1, reason)
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

    def clear(self) -> None:
        self._chunks.clear()
        self._length = 0

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
