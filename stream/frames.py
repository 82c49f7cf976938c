"""Every frame type that passes between a participant's processors, in chain order (as pipecat's frames.py).

Audio: av.AudioFrame → PcmChunk → ScoredChunk → SpeechPaused / SpeechSoFar / ScoredUtterance → HeardUtterance →
SeenUtterance → EstimatedUtterance. Video: av.VideoFrame into the face analysis. EndOfStream and MediaStalled
travel down either chain. The frames the engines make themselves (PcmChunk, the segmenter's, Transcript,
FaceWindow) are defined beside their engine in model/ and named here, so a processor imports frames from here only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.audio.segmenter import ClosedUtterance, SpeechPaused, SpeechSoFar
from model.audio.vad import PcmChunk
from model.audio.whisper import Transcript
from model.emotion.clues import Clues
from model.emotion.estimator import EmotionEstimate
from model.face.micro import FaceWindow

__all__ = [
    "ClosedUtterance",
    "EndOfStream",
    "EstimatedUtterance",
    "FaceWindow",
    "HeardUtterance",
    "MediaStalled",
    "PcmChunk",
    "ScoredChunk",
    "ScoredUtterance",
    "SeenUtterance",
    "SpeechPaused",
    "SpeechSoFar",
    "Transcript",
]


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The media has ended: each stage finishes the frames it holds, pushes what they make, then passes this on."""


@dataclass(frozen=True, slots=True)
class MediaStalled:
    """A track's frames stopped arriving while its peer stays connected: the audio chain closes the speech heard
    so far; when frames come back, their media time again counts from the participant's first frame."""


@dataclass(frozen=True, slots=True)
class ScoredChunk:
    """32 ms of audio and the VAD's speech probability for it."""

    t: float  # media time (s) of samples[0]
    samples: np.ndarray  # (512,) float32 16 kHz mono
    speech_prob: float


@dataclass(frozen=True, slots=True)
class ScoredUtterance:
    """A closed utterance with the VAD's reading over it: which face is speaking follows the VAD."""

    utterance: ClosedUtterance
    speech_t: np.ndarray  # (k,) float64 media time of each VAD chunk in [t0, t1]
    speech_prob: np.ndarray  # (k,) float64 its speech probability


@dataclass(frozen=True, slots=True)
class HeardUtterance:
    """A closed utterance and what was said in it."""

    uid: str  # the utterance id of the events, e.g. "alice-3"
    utterance: ClosedUtterance
    speech_t: np.ndarray  # (k,) as in ScoredUtterance
    speech_prob: np.ndarray  # (k,)
    transcript: Transcript
    final: bool = True  # False: an utterance still open, heard so far (for interim face and emotion)


@dataclass(frozen=True, slots=True)
class SeenUtterance:
    """A heard utterance and the face evidence over it (None: no video analysis for this participant)."""

    uid: str
    utterance: ClosedUtterance
    transcript: Transcript
    window: FaceWindow | None
    final: bool = True  # False: an utterance still open, seen so far


@dataclass(frozen=True, slots=True)
class EstimatedUtterance:
    """An utterance's clues and the fast estimate from them, for the LLM to refine."""

    uid: str
    utterance: ClosedUtterance
    text: str
    clues: Clues
    estimate: EmotionEstimate
    window: FaceWindow | None
    refine: bool = False  # the LLM stage will give the final word
