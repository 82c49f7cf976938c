"""A participant's stages as a chain of processors: one typed frame in, one out, and an end of stream that drains."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from stream import metrics
from stream.clock import MediaClock
from stream.events import CallEvent, ErrorEvent

In = TypeVar("In")
Out = TypeVar("Out")
After = TypeVar("After")
Result = TypeVar("Result")


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The media has ended: each stage finishes the frames it holds, pushes what they make, then passes this on."""


@dataclass(frozen=True, slots=True)
class MediaStalled:
    """A track's frames stopped arriving while its peer stays connected: the audio chain closes the speech heard
    so far; when frames come back, their media time again counts from the participant's first frame."""


class Processor(Generic[In, Out]):
    """One stage of the chain: takes its frames in `process`, hands its own frames to the next stage by `push`.

    Like pipecat's FrameProcessor without the framework: a stage that must not hold up the one before it (a model
    run) keeps its own queue or tasks, and awaits them when EndOfStream reaches it.
    """

    def __init__(self) -> None:
        self._next: Processor[Out, Any] | None = None

    def then(self, stage: Processor[Out, After]) -> Processor[Out, After]:
        """Link `stage` after this one; returns it, so that a chain reads in its order."""
        self._next = stage
        return stage

    async def process(self, frame: In | EndOfStream) -> None:
        raise NotImplementedError

    async def push(self, frame: Out | EndOfStream) -> None:
        if self._next is not None:
            await self._next.process(frame)


class CutShort(Exception):
    """The work was given up: the server stopped waiting for it (see Cutoff)."""


class Cutoff:
    """Shared by every session of a server: once `cut`, the stages stop waiting for model work (a transcript, an
    estimate, the LLM) and deliver what they hold without it, marked as not done, so that a shutdown with a
    backlog ends in time and loses nothing. Until then `race` is the work itself."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._cut = asyncio.Event()

    def cut(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self._cut.set()

    async def race(self, work: Awaitable[Result]) -> Result:
        """`work`'s result, or CutShort (and `work` cancelled) when the cut comes first."""
        task = asyncio.ensure_future(work)
        if self.reason is None:
            cut = asyncio.ensure_future(self._cut.wait())
            try:
                await asyncio.wait({task, cut}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                task.cancel()
                raise
            finally:
                cut.cancel()
        if not task.done():
            task.cancel()
            raise CutShort(self.reason)
        return task.result()


@dataclass(frozen=True, slots=True)
class ParticipantContext:
    """Whose frames a chain carries, their media clock, and the way out for their events (the hub)."""

    call: str
    participant: str
    clock: MediaClock
    publish: Callable[[CallEvent], object]
    log: logging.LoggerAdapter[logging.Logger]
    cutoff: Cutoff = field(default_factory=Cutoff)  # the server's: when it stops waiting for the models

    def utterance_id(self, index: int) -> str:
        return f"{self.participant}-{index}"

    def error_event(self, code: str, message: str, utterance: str | None = None) -> ErrorEvent:
        return ErrorEvent(
            call=self.call, participant=self.participant, code=code, message=message, utterance=utterance
        )

    def error(self, code: str, message: str, utterance: str | None = None) -> None:
        self.publish(self.error_event(code, message, utterance))

    def observe_latency(self, stage: str, speech_end_t: float) -> None:
        """Wall time since the speech ended; media time maps to wall time for a live, real-time stream."""
        elapsed = self.clock.since_media_time(speech_end_t)
        if elapsed is not None:
            metrics.STAGE_LATENCY.labels(stage).observe(elapsed)
