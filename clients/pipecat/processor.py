"""A pipecat processor that reads the emotion of the people on the line from a MicroEmo server.

In: every frame of the pipeline, passed on untouched and at once. The user's audio (InputAudioRawFrame, one
participant per `user_id` of UserAudioRawFrame) and camera images (InputImageRawFrame / UserImageRawFrame, with
`video`) are copied into bounded queues that WebRTC peers of the server read (clients/pipecat/sender.py); the
pipeline never waits on the network. Out, in addition: the server's events as MicroEmo frames
(clients/pipecat/frames.py) in seq order, and an ErrorFrame upstream when the server cannot be reached.

`MicroEmoContextNote` (opt-in) keeps one short system message in an LLMContext saying how the user sounded in
their latest utterance."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import uuid
from collections.abc import Iterable
from typing import Any

from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InputImageRawFrame,
    StartFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.utils.errors import ErrorCategory
from websockets.exceptions import InvalidStatus

from clients.microemo import MicroEmo
from clients.pipecat.frames import MicroEmoEmotionFrame, frame_of_event
from clients.pipecat.sender import MediaSender

log = logging.getLogger(__name__)

DEFAULT_TYPES = ("utterance", "emotion", "reaction", "error")
_NOT_AN_ID = re.compile(r"[^A-Za-z0-9_-]")


def participant_id(user_id: str) -> str:
    """A pipecat user id as a MicroEmo participant id ([A-Za-z0-9_-]{1,64})."""
    return _NOT_AN_ID.sub("-", user_id)[:64] or "user"


class MicroEmoProcessor(FrameProcessor):
    """Place it right after the transport's input. One call per pipeline (`call`, generated when not given),
    one participant per user: `participant` for frames without a user id.

    token: one token with `publish` and `subscribe:<call>` (or `subscribe:*`) rights, when the server has auth on.
    types: the event types asked for; those without a frame class (clients/pipecat/frames.py) are not forwarded.
    interim: also forward updates with `final: false` (the transcript so far of an utterance still spoken).
    video: send camera frames (None: when the pipeline's transports say they receive video).
    host_addresses: the only ICE host addresses to offer (e.g. ["127.0.0.1"] with a server on this machine;
    process-wide, as the server's `webrtc.host_addresses`; needs this repository's `stream` package).
    """

    def __init__(
        self,
        server_url: str = "http://127.0.0.1:8080",
        *,
        call: str | None = None,
        participant: str = "user",
        token: str | None = None,
        types: Iterable[str] = DEFAULT_TYPES,
        interim: bool = True,
        video: bool | None = None,
        host_addresses: list[str] | None = None,
        max_audio_chunks: int = 100,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.server_url = server_url.rstrip("/")
        self.call = participant_id(call) if call else f"pipecat-{uuid.uuid4().hex[:12]}"
        self.participant = participant_id(participant)
        self._token = token
        self._types = tuple(types)
        self._interim = interim
        self._video = video
        self._max_audio_chunks = max_audio_chunks
        self._senders: dict[str, MediaSender] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._unreachable: set[str] = set()  # what is reported down (participants, "events"), said once
        if host_addresses is not None:
            from stream.serve.patches import pin_host_addresses

            pin_host_addresses(host_addresses)

    @property
    def dropped(self) -> dict[str, int]:
        """Media chunks and images dropped because the server was slow or away, per participant."""
        return {p: s.audio.dropped + s.images.dropped for p, s in self._senders.items()}

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            self._sender(frame).put_audio(frame.audio, frame.sample_rate, frame.num_channels)
        elif isinstance(frame, InputImageRawFrame):
            self._sender(frame).put_image(frame.image, frame.size, frame.format)
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self._start()
        elif isinstance(frame, (EndFrame, CancelFrame)):
            await self._stop()

    async def cleanup(self) -> None:
        await self._stop()
        await super().cleanup()

    # -- media ---------------------------------------------------------------------------------------
    def _sender(self, frame: Frame) -> MediaSender:
        user_id = getattr(frame, "user_id", "")
        participant = participant_id(user_id) if user_id else self.participant
        sender = self._senders.get(participant)
        if sender is None:
            sender = self._senders[participant] = MediaSender(
                self.server_url,
                self.call,
                participant,
                token=self._token,
                video=self._wants_video(),
                max_audio_chunks=self._max_audio_chunks,
                on_state=functools.partial(self._on_media_state, participant),
            )
            if self._started:
                self._tasks.append(self.create_task(sender.run(), f"microemo-media-{participant}"))
        return sender

    def _wants_video(self) -> bool:
        if self._video is not None:
            return self._video
        return self._setup is not None and bool(self._setup.pipeline_worker.capabilities.video_in)

    async def _on_media_state(self, participant: str, up: bool, reason: str) -> None:
        if up:
            self._unreachable.discard(participant)
            log.info("MicroEmo: %s of call %s is connected to %s", participant, self.call, self.server_url)
        else:
            await self._report_down(
                participant, f"media of {participant} not reaching {self.server_url}: {reason}"
            )

    async def _report_down(self, what: str, message: str) -> None:
        """Log and push one ErrorFrame (upstream, not fatal) per outage; the retries say nothing more."""
        if what in self._unreachable:
            log.debug("MicroEmo: %s", message)
            return
        self._unreachable.add(what)
        await self.push_error(f"MicroEmo: {message} (retrying)", category=ErrorCategory.CONNECTIVITY)

    # -- events ------------------------------------------------------------------------------------
    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        self._tasks.append(self.create_task(self._follow_events(), "microemo-events"))
        for participant, sender in self._senders.items():
            self._tasks.append(self.create_task(sender.run(), f"microemo-media-{participant}"))

    async def _follow_events(self) -> None:
        """The call's events, from its first (since=0: nothing said before the websocket opened is missed); a
        dropped connection resumes where it stopped (clients/microemo.py), so a blip loses no event."""
        base = self.server_url
        client = MicroEmo(
            "ws" + base[len("http") :] if base.startswith("http") else base,
            self.call,
            self._token,
            self._types,
            since=0,
            on_drop=self._events_dropped,
        )
        backoff = 1.0
        while True:
            try:
                async for event in client.events():
                    if "events" in self._unreachable:
                        log.info("MicroEmo: following the events of call %s", self.call)
                        self._unreachable.discard("events")
                    backoff = 1.0
                    if event.seq is not None:  # call events (replies such as pong are for this client alone)
                        await self._push_event(event.data)
                    elif event.gap:
                        log.warning("MicroEmo: events of call %s lost: %s", self.call, event.data["message"])
            except InvalidStatus as exc:  # refused (a wrong token, a bad call id): said once, tried again
                await self._events_dropped(f"HTTP {exc.response.status_code}")
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, 10.0)

    async def _events_dropped(self, reason: str) -> None:
        await self._report_down(
            "events", f"events of call {self.call} not coming from {self.server_url}: {reason}"
        )

    async def _push_event(self, event: dict[str, Any]) -> None:
        try:
            frame = frame_of_event(event)
        except (KeyError, TypeError, ValueError) as exc:  # a server newer than this client, or a broken one
            log.warning("MicroEmo: event #%s not understood (%r): %s", event.get("seq"), exc, event)
            return
        if frame is None or (not self._interim and not frame.final):
            return
        if frame.event.get("type") == "error":
            log.warning("MicroEmo server: %s", frame.event.get("message"))
        await self.push_frame(frame)

    async def _stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            await self.cancel_task(task)
        await asyncio.gather(*(sender.close() for sender in self._senders.values()))


class MicroEmoContextNote(FrameProcessor):
    """Opt-in: keeps one system message in `context` saying how the user sounded in their latest utterance,
    from each final MicroEmoEmotionFrame (of `participant`, or of anyone when None). Passes every frame on.

    The note follows the conversation: it is replaced, not added to, and it sits at the end of the context when
    written, so the LLM reads it with the user's latest turn. An emotion comes ~1 s after the end of speech, so a
    reply that starts sooner sees the note of the utterance before."""

    def __init__(
        self, context: LLMContext, *, participant: str | None = None, min_score: float = 0.2, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.context = context
        self._participant = participant
        self._min_score = min_score
        self._note: dict[str, Any] | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if (
            isinstance(frame, MicroEmoEmotionFrame)
            and frame.final
            and (self._participant is None or frame.participant == self._participant)
        ):
            self.write(frame)
        await self.push_frame(frame, direction)

    def write(self, emotion: MicroEmoEmotionFrame) -> None:
        messages = [m for m in self.context.messages if m is not self._note]
        self._note = {"role": "system", "content": note_text(emotion, self._min_score)}
        self.context.set_messages([*messages, self._note])


def note_text(emotion: MicroEmoEmotionFrame, min_score: float = 0.2) -> str:
    """`The user sounds frustrated (0.71), annoyed (0.25); valence -0.50, arousal +0.40 (read from their voice
    and words by MicroEmo, heads/2).`"""
    labels = [(label, score) for label, score in emotion.labels if score >= min_score][:3]
    felt = ", ".join(f"{label} ({score:.2f})" for label, score in labels) or "calm, no clear emotion"
    clues = emotion.event.get("clues") or {}
    read = [
        name for key, name in (("audio", "voice"), ("text", "words"), ("visual", "face")) if clues.get(key)
    ]
    source = f"read from their {' and '.join(read)} by MicroEmo" if read else "MicroEmo"
    return (
        f"The user sounds {felt}; valence {emotion.valence:+.2f}, arousal {emotion.arousal:+.2f} "
        f"({source}, {emotion.model})."
    )
