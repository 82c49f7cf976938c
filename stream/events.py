"""Typed events of a call → versioned JSON (API.md); the JSON Schema lives beside this file."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

SCHEMA_VERSION = 2  # 2: interim `utterance`/`face` (`final`), `reaction` events, `closed_by: "stall"`
OLDEST_VERSION = 1  # subscribers may ask for it (`/events?v=1`): see `for_version`
SCHEMA_PATH = Path(__file__).parent / "schema" / "events.json"
ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def is_valid_id(value: object) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class CallEvent:
    """Something that happened to one participant of a call; the hub adds v, seq and ts."""

    TYPE: ClassVar[str]
    call: str
    participant: str

    def body(self) -> dict[str, Any]:
        """Type-specific fields as JSON-able values (optional fields left out when None)."""
        return {
            f.name: _plain(getattr(self, f.name))
            for f in fields(self)
            if f.name not in ("call", "participant")
            and not (f.default is None and getattr(self, f.name) is None)
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ParticipantJoin(CallEvent):
    TYPE: ClassVar[str] = "participant.join"
    tracks: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ParticipantLeave(CallEvent):
    TYPE: ClassVar[str] = "participant.leave"
    tracks: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechStart(CallEvent):
    TYPE: ClassVar[str] = "speech.start"
    t0: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechEnd(CallEvent):
    TYPE: ClassVar[str] = "speech.end"
    t0: float
    t1: float


@dataclass(frozen=True, slots=True)
class WordTiming:
    word: str
    start: float
    end: float
    prob: float


@dataclass(frozen=True, slots=True)
class Label:
    label: str
    score: float


@dataclass(frozen=True, slots=True, kw_only=True)
class UtteranceEvent(CallEvent):
    TYPE: ClassVar[str] = "utterance"
    utterance: str
    t0: float
    t1: float
    text: str
    words: tuple[WordTiming, ...]
    lang: str
    continues: str | None = None  # id of the utterance this one continues after a forced close
    closed_by: str | None = (
        None  # silence | max_length | flush (peer gone) | stall (media stopped); None: open
    )
    final: bool = True  # False: the speech so far of an utterance still open (the closing one replaces it)
    # False: given up before it was transcribed (a shutdown cut short): text and words are empty, no face or
    # emotion follows, and an error event (not_transcribed) says why; None (left out): transcribed
    transcribed: bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FaceEvent(CallEvent):
    TYPE: ClassVar[str] = "face"
    utterance: str
    t0: float
    t1: float
    track: int | None  # the speaking face's track id; None when no face was seen
    present: float  # fraction of analysed frames in [t0, t1] with that face
    regions: dict[str, dict[str, float]]  # per AU-named signal: mean, max, std over the window
    micro: list[dict[str, Any]]  # episodes: region, onset, apex, offset, intensity, kind
    final: bool = True  # False: over the speech so far of an utterance still open


@dataclass(frozen=True, slots=True, kw_only=True)
class ReactionEvent(CallEvent):
    """A listener's face (`participant`) over another participant's utterance, in the listener's media time."""

    TYPE: ClassVar[str] = "reaction"
    utterance: str  # the speaker's utterance id
    speaker: str
    t0: float
    t1: float
    track: int | None
    present: float
    regions: dict[str, dict[str, float]]
    micro: list[dict[str, Any]]
    valence: float | None  # the face vote of the fast estimate; None when no face was seen
    arousal: float | None
    labels: tuple[Label, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class EmotionEvent(CallEvent):
    TYPE: ClassVar[str] = "emotion"
    utterance: str
    t0: float
    t1: float
    labels: tuple[Label, ...]  # open vocabulary, best first
    valence: float  # -1..1
    arousal: float  # -1..1
    explanation: str
    clues: dict[str, Any]  # {"visual", "audio", "text"}: each null when that modality was absent
    final: bool  # False when a refined estimate (the LLM stage) will follow
    model: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorEvent(CallEvent):
    TYPE: ClassVar[str] = "error"
    code: str
    message: str
    utterance: str | None = None


def encode(event: CallEvent, seq: int, ts: float, node: str | None = None) -> dict[str, Any]:
    message = {
        "type": event.TYPE,
        "v": SCHEMA_VERSION,
        "call": event.call,
        "participant": event.participant,
        "seq": seq,
        "ts": ts,
        **event.body(),
    }
    if node is not None:  # the server that holds the call (README "Past one machine"); offline: none
        message["node"] = node
    return message


def for_version(message: dict[str, Any], version: int) -> dict[str, Any] | None:
    """An event as a subscriber of an older schema version reads it; None when that version has no such event.

    Version 1 had no interim updates and no reactions (dropped: such a subscriber sees gaps in seq, as with a
    `types` filter), no `final` on utterance and face events, and called a stalled stream's close a flush."""
    if version >= SCHEMA_VERSION:
        return message
    if message["type"] == "reaction" or (message["type"] in ("utterance", "face") and not message["final"]):
        return None
    old = {
        k: v for k, v in message.items() if not (k == "final" and message["type"] in ("utterance", "face"))
    }
    if old.get("closed_by") == "stall":
        old["closed_by"] = "flush"
    old["v"] = version
    return old


def reply(type_: str, ts: float, **extra: Any) -> dict[str, Any]:
    """A message to one subscriber only (pong, or an error about what it sent): no call sequence number."""
    return {"type": type_, "v": SCHEMA_VERSION, "ts": ts, **extra}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float):
        return round(value, 4)
    if hasattr(value, "__dataclass_fields__"):
        return {k: _plain(v) for k, v in asdict(value).items()}
    return value


@cache
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    return loaded


EVENT_TYPES = (
    "participant.join",
    "participant.leave",
    "speech.start",
    "speech.end",
    "utterance",
    "face",
    "emotion",
    "reaction",
    "error",
)
