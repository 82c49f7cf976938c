"""A participant's steps as a chain of processors (typed frames of stream/frames.py in, frames out) and its context."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from stream import metrics
from stream.clock import MediaClock
from stream.events import CallEvent, ErrorEvent
from stream.frames import EndOfStream, MediaStalled

In = TypeVar("In")
Out = TypeVar("Out")
After = TypeVar("After")
Result = TypeVar("Result")


class Processor(Generic[In, Out]):
    """One step of the chain. Its job is `handle`: a frame in, its own frames handed on by `push`.

    The base owns the rest of the lifecycle, as pipecat's FrameProcessor does: EndOfStream calls `finish` (drain
    what the step holds and push what that makes), then goes on down the chain; MediaStalled calls `stalled` (by
    default it goes on unchanged); `report` logs a failure and publishes it as an `error` event. A step that must
    not hold up the one before it (a model run) keeps its own queue or tasks, and awaits them in `finish`.
    """

    def __init__(self, context: ParticipantContext | None = None) -> None:
        self.context = context  # None for steps that publish nothing (resampling, VAD scores)
        self._next: Processor[Out, Any] | None = None

    def then(self, step: Processor[Out, After]) -> Processor[Out, After]:
        """Link `step` after this one; returns it, so that a chain reads in its order."""
        self._next = step
        return step

    async def process(self, frame: In | MediaStalled | EndOfStream) -> None:
        if isinstance(frame, EndOfStream):
            await self.finish()
            await self.push(frame)
        elif isinstance(frame, MediaStalled):
            await self.stalled(frame)
        else:
            await self.handle(frame)

    async def handle(self, frame: In) -> None:
        raise NotImplementedError

    async def finish(self) -> None:
        """The media has ended: finish the frames this step holds (nothing by default)."""

    async def stalled(self, frame: MediaStalled) -> None:
        await self.push(frame)

    async def push(self, frame: Out | MediaStalled | EndOfStream) -> None:
        if self._next is not None:
            await self._next.process(frame)

    def report(self, code: str, message: str, utterance: str | None = None) -> None:
        """Log the exception being handled (with its traceback) and publish it as an `error` event."""
        assert self.context is not None, "a step that reports failures has a participant context"
        self.context.log.exception("%s (%s)", message, utterance or "-")
        self.context.error(code, message, utterance)


def chain(steps: Sequence[Processor[Any, Any] | None]) -> Processor[Any, Any]:
    """Link the steps in order, leaving out the optional ones that are None; returns the first."""
    present = [step for step in steps if step is not None]
    for step, following in zip(present, present[1:], strict=False):
        step.then(following)
    return present[0]


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
