"""MicroEmo events (the JSON of ../shared/API.md) → pipecat frames: utterance, emotion, reaction, error.

Every frame carries the event's `call`, `participant`, per-call `seq`, media times `t0`/`t1` (seconds since that
participant's first frame) and `final` (False: an interim update of an utterance still being spoken, or a fast
estimate that a refinement follows), and the event itself in `event` for fields not copied out.

They are DataFrames, kept in order with the pipeline's other data, and not interruptible: a user talking over
the bot (an interruption) must not erase what was just read about them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipecat.frames.frames import DataFrame


@dataclass(kw_only=True)
class MicroEmoFrame(DataFrame):
    """What every MicroEmo event frame has."""

    interruptible: bool = field(default=False, init=False)
    call: str
    participant: str
    seq: int
    t0: float | None
    t1: float | None
    final: bool
    event: dict[str, Any]


@dataclass(kw_only=True)
class MicroEmoUtteranceFrame(MicroEmoFrame):
    """What the participant said in one utterance (so far, when not final)."""

    utterance: str
    text: str
    lang: str


@dataclass(kw_only=True)
class MicroEmoEmotionFrame(MicroEmoFrame):
    """The emotion read from one utterance: open-vocabulary labels with scores (best first), valence and
    arousal in -1..1, the explanation citing the clues, and the `model` that produced it."""

    utterance: str
    labels: list[tuple[str, float]]
    valence: float
    arousal: float
    explanation: str
    model: str

    def describe(self) -> str:
        """`frustrated (0.71), annoyed (0.20)`: the first labels, for a log line or a prompt."""
        return ", ".join(f"{label} ({score:.2f})" for label, score in self.labels[:3]) or "no clear emotion"


@dataclass(kw_only=True)
class MicroEmoReactionFrame(MicroEmoFrame):
    """A listener's face while someone else spoke: `participant` is the listener, `speaker` and `utterance` name
    what they were listening to; `valence`/`arousal` are None when the face was too unclear to read."""

    utterance: str
    speaker: str
    labels: list[tuple[str, float]]
    valence: float | None
    arousal: float | None
    micro: list[dict[str, Any]]


@dataclass(kw_only=True)
class MicroEmoErrorFrame(MicroEmoFrame):
    """Something the server wants the client to know (a stage degraded, a bad message)."""

    code: str
    message: str


def _common(event: dict[str, Any]) -> dict[str, Any]:
    return {
        "call": event.get("call", ""),
        "participant": event.get("participant", ""),
        "seq": event.get("seq", -1),
        "t0": event.get("t0"),
        "t1": event.get("t1"),
        "final": event.get("final", True),
        "event": event,
    }


def _labels(event: dict[str, Any]) -> list[tuple[str, float]]:
    return [(str(item["label"]), float(item["score"])) for item in event.get("labels", [])]


def frame_of_event(event: dict[str, Any]) -> MicroEmoFrame | None:
    """The frame for an event of the types the processor forwards; None for any other type."""
    kind = event.get("type")
    if kind == "utterance":
        return MicroEmoUtteranceFrame(
            **_common(event), utterance=event["utterance"], text=event["text"], lang=event.get("lang", "")
        )
    if kind == "emotion":
        return MicroEmoEmotionFrame(
            **_common(event),
            utterance=event["utterance"],
            labels=_labels(event),
            valence=float(event["valence"]),
            arousal=float(event["arousal"]),
            explanation=event.get("explanation", ""),
            model=event["model"],
        )
    if kind == "reaction":
        return MicroEmoReactionFrame(
            **_common(event),
            utterance=event["utterance"],
            speaker=event["speaker"],
            labels=_labels(event),
            valence=event.get("valence"),
            arousal=event.get("arousal"),
            micro=event.get("micro", []),
        )
    if kind == "error":
        return MicroEmoErrorFrame(**_common(event), code=event["code"], message=event["message"])
    return None
