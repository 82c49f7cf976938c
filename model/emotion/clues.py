"""An utterance (transcript, face window, audio) → clues of three modalities as plain data; absent ones stay absent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from model.audio.prosody import Prosody, SpeakerBaseline, measure_prosody
from model.emotion.text_affect import TextAffect, analyse_text
from model.emotion.vocabulary import SentenceEncoder
from model.face.expression import ExpressionClassifier
from model.face.micro import BLINK, FaceWindow, MicroEpisode

MIN_FACE_PRESENT = 0.2  # below this share of frames with the face, the face casts no vote
MIN_VOICED = 0.05  # below this share of voiced pitch frames, the voice casts no vote


# -- what the stream hands over ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class UtteranceInput:
    utterance: str
    t0: float
    t1: float
    text: str
    words: tuple[tuple[str, float, float], ...]  # (word, start, end), media time
    pcm: np.ndarray  # (n,) float32 16 kHz mono, the utterance's own audio
    face: FaceWindow | None  # the speaking face over the utterance; None: no video track at all
    voice: np.ndarray | None = (
        None  # (2 D,) pooled Whisper encoder states of pcm (model/emotion/heads.py), if kept
    )
    heard: float | None = None  # how sure the ASR was of `text`, 0..1; None: text not heard (a written line)


# -- clues ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TextClues:
    text: str
    affect: TextAffect
    embedding: np.ndarray | None  # (384,) float32 unit-length MiniLM sentence embedding
    heard: float | None = None  # how sure the ASR was of the words, 0..1; None: not heard (a written line)

    def to_dict(self) -> dict[str, Any]:
        a = self.affect
        return {
            "transcript": self.text,
            "heard": None if self.heard is None else round(self.heard, 3),
            "valence": round(a.valence, 3),
            "negations": list(a.negations),
            "hedges": list(a.hedges),
            "intensifiers": list(a.intensifiers),
            "exclamations": a.exclamations,
            "questions": a.questions,
        }


@dataclass(frozen=True, slots=True)
class VisualClues:
    present: float
    episodes: tuple[MicroEpisode, ...]  # expressions only (blinks are counted, not read as emotion)
    blinks: int
    action_units: dict[str, float]  # signal → peak rise above baseline in the utterance
    expression: dict[str, float] | None  # FER class probabilities averaged over the utterance's crops

    def to_dict(self) -> dict[str, Any]:
        return {
            "present": round(self.present, 3),
            "episodes": [
                {"region": e.region, "onset": round(e.onset, 2), "offset": round(e.offset, 2), "kind": e.kind}
                for e in self.episodes
            ],
            "blinks": self.blinks,
            "action_units": {k: round(v, 3) for k, v in self.action_units.items()},
            "expression": None
            if self.expression is None
            else {k: round(v, 3) for k, v in self.expression.items()},
        }


@dataclass(frozen=True, slots=True)
class AudioClues:
    prosody: Prosody
    voice: np.ndarray | None = None  # (2 D,) pooled Whisper encoder states, for the voice head

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.prosody.to_dict().items()}


@dataclass(frozen=True, slots=True)
class Clues:
    utterance: str
    t0: float
    t1: float
    text: TextClues | None
    visual: VisualClues | None
    audio: AudioClues | None

    def to_event(self) -> dict[str, Any]:
        """The `clues` field of the emotion event: an absent modality is null, never imputed."""
        return {
            "text": self.text.to_dict() if self.text else None,
            "visual": self.visual.to_dict() if self.visual else None,
            "audio": self.audio.to_dict() if self.audio else None,
        }


class ClueExtractor:
    """Builds Clues; the models are shared by every call (each is cheap per utterance: ~1 ms FER per crop,
    ~10 ms MiniLM per sentence, ~10 ms prosody per second of audio)."""

    def __init__(self, expression: ExpressionClassifier | None, sentences: SentenceEncoder | None) -> None:
        self._expression = expression
        self._sentences = sentences

    def extract(self, utterance: UtteranceInput, speaker: SpeakerBaseline | None = None) -> Clues:
        return Clues(
            utterance=utterance.utterance,
            t0=utterance.t0,
            t1=utterance.t1,
            text=self.text_clues(utterance.text, utterance.heard),
            visual=self.visual_clues(utterance.face),
            audio=audio_clues(utterance, speaker),
        )

    def text_clues(self, text: str, heard: float | None = None) -> TextClues | None:
        if not text.strip():
            return None
        embedding = self._sentences.embed_one(text) if self._sentences is not None else None
        return TextClues(text=text.strip(), affect=analyse_text(text), embedding=embedding, heard=heard)

    def visual_clues(self, face: FaceWindow | None) -> VisualClues | None:
        if face is None or face.present < MIN_FACE_PRESENT:
            return None
        expression = None
        if self._expression is not None and face.crops:
            expression = self._expression.classify_many(list(face.crops))
        return VisualClues(
            present=face.present,
            episodes=tuple(face.expressions),
            blinks=sum(1 for e in face.episodes if e.region == BLINK),
            action_units={
                name: max(0.0, float(stats.get("max", 0.0)))
                for name, stats in face.regions.items()
                if not name.startswith("head_")
            },
            expression=expression,
        )


def audio_clues(utterance: UtteranceInput, speaker: SpeakerBaseline | None) -> AudioClues | None:
    if len(utterance.pcm) < 1600:  # under 0.1 s: nothing to measure
        return None
    words = [(start, end) for _, start, end in utterance.words]
    prosody = measure_prosody(utterance.pcm, words=words or None, baseline=speaker)
    if prosody.voiced_fraction < MIN_VOICED:
        return None
    if speaker is not None:
        speaker.update(prosody)
    return AudioClues(prosody, utterance.voice)
