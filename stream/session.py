"""One participant of a call: its tracks into the chain of stages (put in order by `build_session`), events out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from model.audio.vad import SileroModel
from stream import metrics
from stream.clock import LiveClock, MediaClock
from stream.config import AudioSettings, VideoSettings
from stream.emotion.emotion_service import EmotionService
from stream.emotion.estimate import Estimate, Refine
from stream.emotion.reactions import Listener, Listeners, React
from stream.events import ParticipantJoin, ParticipantLeave
from stream.faces.face_process import FaceProcesses
from stream.faces.windows import FaceWindows, VideoFrames
from stream.frames import EndOfStream, MediaStalled
from stream.overload import Shedder
from stream.pipeline import Cutoff, ParticipantContext, Processor, chain
from stream.publish.hub import Hub
from stream.speech.segment import Resample, ScoreSpeech, Segment
from stream.transcribe.asr_service import TranscriptionService
from stream.transcribe.transcribe import Transcribe

log = logging.getLogger(__name__)
_DRAIN_TIMEOUT_S = 0.5


@dataclass(frozen=True, slots=True)
class PipelineParts:
    """What every participant's pipeline shares: the hub, the models, the settings of the stages, and who else is
    in each call (for listeners' reactions; None: each participant is on their own, as in a file)."""

    hub: Hub
    vad_model: SileroModel
    asr: TranscriptionService
    audio: AudioSettings
    video: VideoSettings
    emotion: EmotionService | None
    listeners: Listeners | None = None
    shedder: Shedder | None = None  # what a live server sheds under overload (None: nothing, as for a file)
    face_processes: FaceProcesses | None = None  # where face models run (None: in this process's threads)
    cutoff: Cutoff = field(default_factory=Cutoff)  # when the server stops waiting for the models (shutdown)


def build_session(
    parts: PipelineParts,
    *,
    call: str,
    participant: str,
    session_id: str,
    pc: RTCPeerConnection | None = None,
    clock: MediaClock | None = None,
    media_end_reason: str = "hangup",
    on_closed: Callable[[ParticipantSession], Awaitable[None] | None] | None = None,
) -> ParticipantSession:
    """A participant's session, live (server.py) or from a file (offline.py): the one place the stages are
    put in order."""
    context = ParticipantContext(
        call=call,
        participant=participant,
        clock=clock or LiveClock(),
        publish=parts.hub.publish,
        log=logging.LoggerAdapter(log, {"call": call, "participant": participant}),
        cutoff=parts.cutoff,
    )
    emotion = parts.emotion
    video = None
    if parts.video.enabled:
        whole_frames = emotion.whole_frames if emotion is not None else None
        video = VideoFrames(context, parts.video, whole_frames, parts.shedder, parts.face_processes)
    # Interim updates and stalls are about live media: a file is read faster than it was spoken, and never stalls
    live = context.clock.realtime
    interim_s = parts.audio.interim_s if live else None
    interim_emotion_s = emotion.settings.interim_s if emotion is not None and live else None
    audio = chain(
        [
            Resample(context.clock),
            ScoreSpeech(parts.vad_model, context.clock, parts.shedder),
            Segment(context, parts.audio.vad, interim_s, lambda: parts.asr.interim_seconds),
            Transcribe(context, parts.asr, interim_emotion_s, parts.shedder),
            FaceWindows(context, video),
            Estimate(context, emotion) if emotion is not None else None,
            React(context, parts.listeners, emotion)
            if emotion is not None and parts.listeners is not None
            else None,
            Refine(context, emotion.refiner) if emotion is not None and emotion.refiner is not None else None,
        ]
    )
    listeners = parts.listeners if video is not None else None
    if listeners is not None and video is not None:
        listeners.join(call, Listener(participant, video, context.clock))
    return ParticipantSession(
        context,
        session_id,
        pc,
        audio=audio,
        video=video,
        stall_s=parts.audio.stall_s if live else None,
        listeners=listeners,
        media_end_reason=media_end_reason,
        on_closed=on_closed,
    )


class ParticipantSession:
    """Owns one RTCPeerConnection (None for a file) and feeds its tracks to the chains: the first audio track
    to the audio chain, the first video track to the face analysis; any further track is read and dropped.
    Media time counts from the participant's first frame on any track. A track whose frames stop for `stall_s`
    while the peer stays (a muted or frozen sender) tells its chain, which closes the speech heard so far."""

    def __init__(
        self,
        context: ParticipantContext,
        session_id: str,
        pc: RTCPeerConnection | None,
        *,
        audio: Processor[Any, Any],
        video: VideoFrames | None,
        stall_s: float | None = None,
        listeners: Listeners | None = None,
        media_end_reason: str = "hangup",
        on_closed: Callable[[ParticipantSession], Awaitable[None] | None] | None = None,
    ) -> None:
        self.call, self.participant, self.id = context.call, context.participant, session_id
        self.pc = pc
        self.log = context.log
        self._context = context
        self._audio = audio
        self._video = video
        self._stall_s = stall_s
        self._listeners = listeners
        self._fed: set[str] = set()  # kinds of track that feed their chain
        self._media_end_reason = media_end_reason
        self._on_closed = on_closed
        self._media_tasks: list[asyncio.Task[None]] = []
        self._video_opening: asyncio.Task[None] | None = None  # the face models loading, at the first frame
        self._joined = False
        self._closing: asyncio.Task[None] | None = None
        self.tracks: list[str] = []

    def add_track(self, track: MediaStreamTrack) -> None:
        self.tracks.append(track.kind)
        task = asyncio.create_task(self._read(track, self._head_for(track.kind)))
        task.add_done_callback(self._media_task_done)
        self._media_tasks.append(task)

    def connected(self) -> None:
        if not self._joined:
            self._joined = True
            self._context.publish(
                ParticipantJoin(call=self.call, participant=self.participant, tracks=self._kinds())
            )

    def close(self, reason: str) -> asyncio.Task[None]:
        """Idempotent. Drains the chains (the speech heard so far is transcribed), then announces the leave."""
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(reason))
        return self._closing

    @property
    def closed(self) -> bool:
        return self._closing is not None

    def _head_for(self, kind: str) -> Processor[Any, Any] | None:
        """The chain a new track feeds: only the first track of each kind is analysed."""
        if kind in self._fed:
            return None
        self._fed.add(kind)
        return self._audio if kind == "audio" else self._video

    async def _read(self, track: MediaStreamTrack, head: Processor[Any, Any] | None) -> None:
        # A track is read to its end even when nothing analyses it, or aiortc queues its frames without bound.
        video = head if isinstance(head, VideoFrames) else None
        receiving: asyncio.Task[Any] | None = None
        stalled, started = False, False
        try:
            while True:
                receiving = receiving or asyncio.ensure_future(track.recv())
                watch = self._stall_s if head is not None and started and not stalled else None
                done, _ = await asyncio.wait({receiving}, timeout=watch)
                if not done:  # frames stopped; the peer may still be there (a muted or frozen sender)
                    stalled = True
                    metrics.MEDIA_STALLS.labels(track.kind).inc()
                    self.log.info("%s track stalled for %.1f s", track.kind, watch)
                    await head.process(MediaStalled())  # type: ignore[union-attr]
                    continue
                try:
                    frame = receiving.result()
                except MediaStreamError:
                    return
                receiving = None
                if stalled:
                    self.log.info("%s track resumed", track.kind)
                stalled, started = False, True
                if video is not None and self._video_opening is None:
                    # Face models load when video flows, not at the offer: an offer that never connects costs
                    # none. Shielded: a close meanwhile waits for the load and then closes what it made (_close).
                    self._video_opening = asyncio.create_task(video.open())
                    await asyncio.shield(self._video_opening)
                if head is not None:
                    await head.process(frame)
        finally:
            if receiving is not None:
                receiving.cancel()

    def _media_task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.log.error("media stage failed: %r", task.exception())
            self._context.error("media_failed", f"media processing failed: {task.exception()!r}")
        if all(t.done() for t in self._media_tasks) and not self.closed:
            self.close(self._media_end_reason)

    async def _close(self, reason: str) -> None:
        # Frames the peer sent before it went are still queued in aiortc's track: let them through first.
        if self._media_tasks:
            await asyncio.wait(self._media_tasks, timeout=_DRAIN_TIMEOUT_S)
        for task in self._media_tasks:
            task.cancel()
        await asyncio.gather(*self._media_tasks, return_exceptions=True)
        # Each stage finishes in chain order: the open speech closes, every closed utterance is transcribed and
        # emitted, LLM answers arrive; then the video analysis (which the face windows read) closes.
        await self._audio.process(EndOfStream())
        if self._video_opening is not None:
            await asyncio.gather(self._video_opening, return_exceptions=True)
        if self._video is not None:
            if self._listeners is not None:
                self._listeners.leave(self.call, self.participant, self._video)
            await self._video.process(EndOfStream())
        if self._joined:
            self._context.publish(
                ParticipantLeave(
                    call=self.call, participant=self.participant, tracks=self._kinds(), reason=reason
                )
            )
        if self.pc is not None:
            try:
                await self.pc.close()
            except Exception:
                self.log.exception("closing the peer connection failed")
        self.log.info("session closed (%s)", reason)
        if self._on_closed is not None:
            result = self._on_closed(self)
            if result is not None:
                await result

    def _kinds(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.tracks)))
