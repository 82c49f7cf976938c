"""Each closed utterance of a speaker → the faces of the call's other participants over it → reaction events."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from stream import metrics
from stream.clock import LiveClock, MediaClock
from stream.emotion.emotion_service import EmotionService
from stream.events import Label, ReactionEvent
from stream.faces.windows import CATCH_UP_S, VideoFrames, caught_up
from stream.frames import EstimatedUtterance
from stream.pipeline import ParticipantContext, Processor


@dataclass(frozen=True, slots=True)
class Listener:
    """A participant whose camera may show how they take what others say."""

    participant: str
    video: VideoFrames
    clock: MediaClock


class Listeners:
    """Who is in each call with video analysis: each participant's session joins when it starts and leaves when
    it closes; a speaker's reactions stage asks for the others."""

    def __init__(self) -> None:
        self._calls: dict[str, dict[str, Listener]] = {}

    def join(self, call: str, listener: Listener) -> None:
        self._calls.setdefault(call, {})[listener.participant] = listener

    def leave(self, call: str, participant: str, video: VideoFrames) -> None:
        members = self._calls.get(call, {})
        if participant in members and members[participant].video is video:  # not a newer session of theirs
            del members[participant]
        if not members:
            self._calls.pop(call, None)

    def others(self, call: str, speaker: str) -> list[Listener]:
        return [listener for name, listener in self._calls.get(call, {}).items() if name != speaker]


class React(Processor[EstimatedUtterance, EstimatedUtterance]):
    """For each closed utterance, every other participant whose camera shows a face over the utterance's span
    gets a reaction event: their face evidence and the face vote of the fast estimate. Participants' media
    clocks start at their own first frames, so the span is carried over through the wall clock; a participant
    whose camera is off, or shows no face over the span, gets none."""

    def __init__(self, context: ParticipantContext, listeners: Listeners, emotion: EmotionService) -> None:
        super().__init__(context)
        self._context = context
        self._listeners = listeners
        self._emotion = emotion

    async def handle(self, frame: EstimatedUtterance) -> None:
        others = self._listeners.others(self._context.call, self._context.participant)
        reactions = await asyncio.gather(*(self._reaction(listener, frame) for listener in others))
        for reaction in reactions:
            if reaction is not None:
                self._context.publish(reaction)
                metrics.REACTIONS.inc()
        await self.push(frame)

    async def _reaction(self, listener: Listener, frame: EstimatedUtterance) -> ReactionEvent | None:
        analysis = listener.video.analysis
        offset = _clock_offset(self._context.clock, listener.clock)
        if analysis is None or offset is None:
            return None
        t0, t1 = max(0.0, frame.utterance.t0 + offset), frame.utterance.t1 + offset
        if t1 <= t0:
            return None  # the listener's media began after the utterance ended
        await caught_up(analysis, t1, CATCH_UP_S)
        window = await asyncio.to_thread(analysis.listener_window, t0, t1)
        if window.present <= 0:
            return None
        reading = await self._emotion.face_reading(frame.uid, window)
        return ReactionEvent(
            call=self._context.call,
            participant=listener.participant,
            utterance=frame.uid,
            speaker=self._context.participant,
            t0=t0,
            t1=t1,
            **window.to_event_fields(),
            valence=None if reading is None else reading.valence,
            arousal=None if reading is None else reading.arousal,
            labels=() if reading is None else tuple(Label(word, score) for word, score in reading.labels),
        )


def _clock_offset(speaker: MediaClock, listener: MediaClock) -> float | None:
    """Seconds to add to the speaker's media time to get the listener's (None: not two live clocks started)."""
    if not isinstance(speaker, LiveClock) or not isinstance(listener, LiveClock):
        return None
    if speaker.start is None or listener.start is None:
        return None
    return speaker.start - listener.start
