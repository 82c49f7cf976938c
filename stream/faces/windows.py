"""Video frames → the participant's face analysis; per heard utterance, its face window → face events."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import av

from stream.clock import pts_seconds
from stream.config import VideoSettings
from stream.events import FaceEvent
from stream.faces.analysis import VideoAnalysis
from stream.faces.face_process import FaceProcesses
from stream.faces.sampling import WholeFrames
from stream.frames import HeardUtterance, MediaStalled, SeenUtterance
from stream.overload import Shedder
from stream.pipeline import ParticipantContext, Processor

CATCH_UP_S = 1.0  # how long an utterance's face window waits for frames still in analysis
_NO_FACE: dict[str, Any] = {"track": None, "present": 0.0, "regions": {}, "micro": []}


class VideoFrames(Processor[av.VideoFrame, None]):
    """A video track's frames, on the participant's media clock, into its face analysis (a worker thread).
    After a stall, the frames that come back are placed on the clock anew (never before those already seen).

    A face-analysis failure is sent once as an `error` event (face_failed). At the end of the stream (after the
    audio chain has drained, as its face windows read this analysis) the analysis is closed.
    """

    def __init__(
        self,
        context: ParticipantContext,
        settings: VideoSettings,
        whole_frames: WholeFrames | None,
        shedder: Shedder | None = None,
        processes: FaceProcesses | None = None,
    ) -> None:
        super().__init__(context)
        self._context = context
        self._settings = settings
        self._shedder = shedder  # thins the analysed frames while speech runs late
        self._processes = processes  # the face models run there (None: in the analysis thread)
        self._whole_frames = whole_frames  # kept only when the LLM stage's visual encoder will read them
        self.analysis: VideoAnalysis | None = None
        self._first_pts_s: float | None = None
        self._t_offset = 0.0
        self._last_t = 0.0

    async def open(self) -> None:
        """Load the face models, before the track's first frame is taken."""
        if self.analysis is not None:
            return
        context, loop = self._context, asyncio.get_running_loop()

        def failed(message: str) -> None:  # called from the analysis thread
            loop.call_soon_threadsafe(context.publish, context.error_event("face_failed", message))

        name = f"{context.call}/{context.participant}"
        self.analysis = await asyncio.to_thread(
            VideoAnalysis,
            self._settings,
            name,
            self._whole_frames,
            failed,
            shedder=self._shedder,
            processes=self._processes,
        )

    async def finish(self) -> None:
        if self.analysis is not None:
            await asyncio.to_thread(self.analysis.close)

    async def stalled(self, frame: MediaStalled) -> None:
        self._first_pts_s = None

    async def handle(self, frame: av.VideoFrame) -> None:
        pts_s = pts_seconds(frame)
        if self._first_pts_s is None:
            offset = self._context.clock.track_offset(pts_s)
            self._first_pts_s, self._t_offset = pts_s, max(offset, self._last_t)
        if self.analysis is None:
            return
        t = self._last_t = self._t_offset + pts_s - self._first_pts_s
        if not self._context.clock.realtime:  # a file waits for the analysis instead of dropping frames
            while self.analysis.backlog >= self._settings.queue_frames:
                await asyncio.sleep(0.005)
        self.analysis.offer(frame, t)


class FaceWindows(Processor[HeardUtterance, SeenUtterance]):
    """The face evidence over each heard utterance, once the frames up to its end have been analysed (waiting up
    to `catch_up_s`), published as a face event. Without video analysis (`video` None) there is no face event.
    An utterance still open (final False) takes the frames analysed so far, without waiting."""

    def __init__(
        self, context: ParticipantContext, video: VideoFrames | None, catch_up_s: float = CATCH_UP_S
    ) -> None:
        super().__init__(context)
        self._context = context
        self._video = video
        self._catch_up_s = catch_up_s

    async def handle(self, frame: HeardUtterance) -> None:
        utterance = frame.utterance
        window = None
        if self._video is not None:
            fields = _NO_FACE  # video analysis is on, but this participant sends no video
            analysis = self._video.analysis
            if analysis is not None:
                # once the server stops waiting (shutdown cut short), the frames analysed so far
                waits = frame.final and self._context.cutoff.reason is None
                await caught_up(analysis, utterance.t1, self._catch_up_s if waits else 0.0)
                window = await asyncio.to_thread(
                    analysis.window, utterance.t0, utterance.t1, frame.speech_t, frame.speech_prob
                )
                fields = window.to_event_fields()
            context = self._context
            context.publish(
                FaceEvent(
                    call=context.call,
                    participant=context.participant,
                    utterance=frame.uid,
                    t0=utterance.t0,
                    t1=utterance.t1,
                    **fields,
                    final=frame.final,
                )
            )
        await self.push(SeenUtterance(frame.uid, utterance, frame.transcript, window, frame.final))


async def caught_up(analysis: VideoAnalysis, t: float, timeout_s: float) -> None:
    """Wait (up to timeout_s) until the frames up to media time t have been analysed, or none are queued."""
    deadline = time.monotonic() + timeout_s
    while analysis.analysed_until < t and not analysis.idle and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
