"""Phone lines: a media websocket in the Twilio Media Streams format in, one audio track per phone leg out.

In: the JSON text messages a Twilio `<Stream>` sends (`connected`, `start`, `media`, `dtmf`, `mark`, `stop`),
each `media` carrying 20 ms of base64 G.711 μ-law at 8 kHz for the `inbound` or `outbound` track. Out: for each
track named in `start.tracks`, a ParticipantSession (the server opens it) fed by a PhoneTrack, an aiortc
MediaStreamTrack of 8 kHz mono s16 av.AudioFrames whose pts come from `media.timestamp`; from there a phone leg
goes through the same steps, and makes the same events, as a WebRTC participant's microphone. Chunks that come
out of order are put back in order within a small window; a chunk that never comes is silence of its length.
A malformed message is answered with an error message and closes that stream only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np
from aiohttp import WSMsgType, web
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from stream import metrics
from stream.serve.errors import ApiError
from stream.session import ParticipantSession

log = logging.getLogger(__name__)

SAMPLE_RATE = 8000  # G.711 telephony audio, the only rate Twilio streams
TIME_BASE = Fraction(1, SAMPLE_RATE)
MEDIA_FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": SAMPLE_RATE, "channels": 1}
TRACKS = ("inbound", "outbound")
# Who each track is when `start.customParameters` does not say: with `<Start><Stream track="both_tracks">`
# before a `<Dial>`, Twilio's inbound track is the caller and its outbound track the callee's voice.
DEFAULT_PARTICIPANTS = {"inbound": "caller", "outbound": "callee"}
PARTICIPANT_PARAMETERS = {"inbound": "participant", "outbound": "outbound_participant"}
MAX_GAP_FILL_S = 5.0  # a longer silence in the timestamps is a jump of the media clock, not filled


def _mulaw_table() -> np.ndarray:
    """ITU-T G.711 μ-law expansion of every byte: (256,) int16, ±32124 at most."""
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(codes & 0x80, -magnitude, magnitude).astype(np.int16)


MULAW_TO_PCM = _mulaw_table()


def decode_mulaw(payload: bytes) -> np.ndarray:
    """μ-law bytes → (n,) int16 linear PCM."""
    return MULAW_TO_PCM[np.frombuffer(payload, dtype=np.uint8)]


class StreamError(Exception):
    """A message this stream cannot go on from: answered on the socket with `code`, then the stream closes."""

    def __init__(self, code: str, message: str, close_code: int = 1008) -> None:
        super().__init__(message)
        self.code, self.message, self.close_code = code, message, close_code


# -- messages ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StreamStart:
    stream_sid: str
    call_sid: str
    tracks: tuple[str, ...]  # a subset of TRACKS, in TRACKS' order
    parameters: dict[str, str]  # start.customParameters (TwiML <Parameter>s)


@dataclass(frozen=True, slots=True)
class MediaChunk:
    track: str
    chunk: int  # counts up by 1 per message of this track
    timestamp_ms: int  # since the stream started
    samples: np.ndarray  # (n,) int16 at 8 kHz


@dataclass(frozen=True, slots=True)
class StreamStop:
    pass


@dataclass(frozen=True, slots=True)
class Notice:
    """`connected`, `dtmf`, `mark`: understood, nothing to analyse."""

    event: str


Message = StreamStart | MediaChunk | StreamStop | Notice


def parse_message(text: str) -> Message:
    """One text message of a Twilio media stream, checked; StreamError says what is wrong with it."""
    try:
        message = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise StreamError("bad_json", "a message is not JSON") from exc
    if not isinstance(message, dict):
        raise StreamError("bad_message", "a message must be a JSON object")
    event = message.get("event")
    if event in ("connected", "dtmf", "mark"):
        return Notice(event)
    if event == "start":
        return _parse_start(_object(message, "start"), message)
    if event == "media":
        return _parse_media(_object(message, "media"))
    if event == "stop":
        return StreamStop()
    raise StreamError(
        "unknown_event",
        f"unknown event {str(event)[:40]!r}; expected connected, start, media, dtmf, mark, stop",
    )


def _parse_start(start: dict[str, Any], message: dict[str, Any]) -> StreamStart:
    media_format = start.get("mediaFormat")
    if not isinstance(media_format, dict) or any(media_format.get(k) != v for k, v in MEDIA_FORMAT.items()):
        raise StreamError(
            "bad_media_format",
            f"start.mediaFormat must be {json.dumps(MEDIA_FORMAT)}, got {json.dumps(media_format)[:200]}",
        )
    tracks = start.get("tracks", ["inbound"])
    if (
        not isinstance(tracks, list)
        or not tracks
        or any(t not in TRACKS for t in tracks)
        or len(set(tracks)) != len(tracks)
    ):
        raise StreamError("bad_tracks", 'start.tracks must be ["inbound"], ["outbound"] or both')
    parameters = start.get("customParameters") or {}
    if not isinstance(parameters, dict) or not all(isinstance(v, str) for v in parameters.values()):
        raise StreamError("bad_message", "start.customParameters must map names to strings")
    return StreamStart(
        stream_sid=str(start.get("streamSid") or message.get("streamSid") or ""),
        call_sid=str(start.get("callSid") or ""),
        tracks=tuple(t for t in TRACKS if t in tracks),
        parameters=parameters,
    )


def _parse_media(media: dict[str, Any]) -> MediaChunk:
    track = media.get("track", "inbound")
    if track not in TRACKS:
        raise StreamError("bad_message", f"media.track must be inbound or outbound, got {str(track)[:40]!r}")
    payload = media.get("payload")
    if not isinstance(payload, str):
        raise StreamError("bad_payload", "media.payload must be a base64 string")
    try:
        audio = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise StreamError("bad_payload", "media.payload is not valid base64") from exc
    return MediaChunk(
        track=track,
        chunk=_count(media, "chunk"),
        timestamp_ms=_count(media, "timestamp"),
        samples=decode_mulaw(audio),
    )


def _object(message: dict[str, Any], key: str) -> dict[str, Any]:
    value = message.get(key)
    if not isinstance(value, dict):
        raise StreamError("bad_message", f"a {key} message needs a '{key}' object")
    return value


def _count(media: dict[str, Any], key: str) -> int:
    """A non-negative integer that Twilio sends as a string ("20")."""
    value = media.get(key)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 15:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise StreamError("bad_message", f"media.{key} must be a non-negative integer (as a string)")


# -- one track -----------------------------------------------------------------------------------
@dataclass
class Reorder:
    """Chunks by their number → the same chunks in order. A chunk that comes early waits until the ones
    before it come, for at most `window` chunks held; then the missing ones are given up (`lost`). A chunk that
    comes after its place has passed, or twice, is dropped (`late`); so is one older than the first chunk seen,
    which starts the count."""

    window: int
    next: int | None = None  # the chunk number due next
    late: int = 0
    lost: int = 0
    _held: dict[int, MediaChunk] = field(default_factory=dict)

    def push(self, chunk: MediaChunk) -> list[MediaChunk]:
        if self.next is None:
            self.next = chunk.chunk
        if chunk.chunk < self.next or chunk.chunk in self._held:
            self.late += 1
            return []
        self._held[chunk.chunk] = chunk
        ready = []
        while self._held:
            if self.next in self._held:
                ready.append(self._held.pop(self.next))
                self.next += 1
            elif len(self._held) > self.window:
                skip_to = min(self._held)
                self.lost += skip_to - self.next
                self.next = skip_to
            else:
                break
        return ready

    def flush(self) -> list[MediaChunk]:
        """The chunks still held, in order (the stream ended: the missing ones will not come)."""
        ready = [self._held.pop(n) for n in sorted(self._held)]
        if ready and self.next is not None:
            self.lost += ready[-1].chunk + 1 - self.next - len(ready)
            self.next = ready[-1].chunk + 1
        return ready


class PhoneTrack(MediaStreamTrack):
    """One leg of a phone call as an aiortc audio track: 8 kHz mono s16 av.AudioFrames, pts (1/8000) from each
    chunk's `media.timestamp`. A stretch of time no chunk covered (a lost chunk, a pause in the stream) comes as
    a frame of silence, so that the media clock keeps to the caller's time; one longer than MAX_GAP_FILL_S is
    left as a jump of the pts (the resampler fills it up to its own bound)."""

    kind = "audio"

    def __init__(self, reorder_window: int) -> None:
        super().__init__()
        self._reorder = Reorder(reorder_window)
        self._frames: asyncio.Queue[av.AudioFrame | None] = asyncio.Queue()
        self._next_pts: int | None = None
        self._ended = False

    def push(self, chunk: MediaChunk) -> None:
        if self._ended:
            return
        late, lost = self._reorder.late, self._reorder.lost
        for ready in self._reorder.push(chunk):
            self._queue(ready)
        self._count(late, lost)

    def end(self) -> None:
        """No more chunks: what is held goes out, then recv() ends the track."""
        if self._ended:
            return
        late, lost = self._reorder.late, self._reorder.lost
        for ready in self._reorder.flush():
            self._queue(ready)
        self._count(late, lost)
        self._ended = True
        self._frames.put_nowait(None)

    @property
    def late(self) -> int:
        return self._reorder.late

    @property
    def lost(self) -> int:
        return self._reorder.lost

    async def recv(self) -> av.AudioFrame:
        frame = await self._frames.get()
        if frame is None:
            self._frames.put_nowait(None)  # every later recv() ends too
            self.stop()
            raise MediaStreamError
        return frame

    def _queue(self, chunk: MediaChunk) -> None:
        pts = chunk.timestamp_ms * SAMPLE_RATE // 1000
        if self._next_pts is not None and 0 < pts - self._next_pts <= MAX_GAP_FILL_S * SAMPLE_RATE:
            self._frames.put_nowait(_frame(np.zeros(pts - self._next_pts, np.int16), self._next_pts))
        if len(chunk.samples):
            self._frames.put_nowait(_frame(chunk.samples, pts))
        self._next_pts = max(self._next_pts or 0, pts + len(chunk.samples))

    def _count(self, late_before: int, lost_before: int) -> None:
        if self._reorder.late > late_before:
            metrics.PHONE_CHUNKS.labels("late").inc(self._reorder.late - late_before)
        if self._reorder.lost > lost_before:
            metrics.PHONE_CHUNKS.labels("lost").inc(self._reorder.lost - lost_before)


def _frame(samples: np.ndarray, pts: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, pts, TIME_BASE
    return frame


# -- one websocket -------------------------------------------------------------------------------
# Opens a participant per (track, participant id) of a stream, or raises ApiError (full, draining, taken id).
OpenParticipants = Callable[[Sequence[tuple[PhoneTrack, str]]], list[ParticipantSession]]


class PhoneStream:
    """One media websocket, from `connected` to `stop` (or the socket's close): its tracks' chunks to their
    participants. `authorized`: the handshake carried a token with the publish right; otherwise `check_token`
    must accept `start.customParameters.token` (Twilio cannot send headers)."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        call: str,
        open_participants: OpenParticipants,
        *,
        reorder_window: int,
        authorized: bool,
        check_token: Callable[[str | None], None],
    ) -> None:
        self._ws = ws
        self._call = call
        self._open = open_participants
        self._reorder_window = reorder_window
        self._authorized = authorized
        self._check_token = check_token
        self._tracks: dict[str, PhoneTrack] = {}
        self._sessions: list[ParticipantSession] = []
        self._log = logging.LoggerAdapter(log, {"call": call, "participant": "-"})

    async def run(self) -> None:
        reason = "hangup"
        try:
            async for message in self._ws:
                if message.type == WSMsgType.BINARY:
                    raise StreamError("bad_message", "send JSON text messages, not binary ones")
                if message.type == WSMsgType.ERROR:  # aiohttp has closed the socket (1009: a message too big)
                    raise StreamError("bad_message", f"websocket error: {self._ws.exception()}")
                if message.type != WSMsgType.TEXT:
                    continue
                if self._handle(parse_message(message.data)):
                    break
        except StreamError as exc:
            reason = "error"
            await self._refuse(exc)
        finally:
            self._end(reason)
        if not self._ws.closed:
            await self._ws.close()

    def _handle(self, message: Message) -> bool:
        """True once the stream has stopped."""
        if isinstance(message, StreamStart):
            self._start(message)
        elif isinstance(message, MediaChunk):
            track = self._tracks.get(message.track)
            if track is None:
                raise StreamError(
                    "bad_message",
                    f"media of the {message.track} track, which start did not announce"
                    if self._tracks
                    else "media before start",
                )
            track.push(message)
        elif isinstance(message, StreamStop):
            return True
        return False

    def _start(self, start: StreamStart) -> None:
        if self._tracks:
            raise StreamError("bad_message", "a second start on the same stream")
        if not self._authorized:
            try:
                self._check_token(start.parameters.get("token"))
            except ApiError as exc:
                raise StreamError(exc.code, exc.message) from exc
        legs = [
            (
                PhoneTrack(self._reorder_window),
                start.parameters.get(PARTICIPANT_PARAMETERS[track], DEFAULT_PARTICIPANTS[track]),
            )
            for track in start.tracks
        ]
        if len({participant for _, participant in legs}) != len(legs):
            raise StreamError("bad_message", "both tracks are named as the same participant")
        try:
            self._sessions = self._open(legs)
        except ApiError as exc:
            raise StreamError(exc.code, exc.message, 1013 if exc.status == 503 else 1008) from exc
        self._tracks = {track: leg for track, (leg, _) in zip(start.tracks, legs, strict=True)}
        self._log.info(
            "phone stream %s (call %s) started: %s",
            start.stream_sid or "-",
            start.call_sid or "-",
            ", ".join(f"{t}={s.participant}" for t, s in zip(start.tracks, self._sessions, strict=True)),
        )

    def _end(self, reason: str) -> None:
        """The stream is over: each track gives out what it holds; its participant then leaves as a WebRTC
        peer that hung up does (the open utterance is closed and transcribed)."""
        for track in self._tracks.values():
            track.end()
            if track.late or track.lost:
                self._log.info("phone track: %d chunks came too late, %d never came", track.late, track.lost)
        if reason != "hangup":
            for session in self._sessions:
                session.close(reason)

    async def _refuse(self, exc: StreamError) -> None:
        metrics.PHONE_STREAM_ERRORS.labels(exc.code).inc()
        self._log.warning("phone stream closed: %s (%s)", exc.message, exc.code)
        if self._ws.closed:
            return
        try:
            await self._ws.send_json({"event": "error", "error": {"code": exc.code, "message": exc.message}})
            await self._ws.close(code=exc.close_code, message=exc.code.encode())
        except ConnectionError:
            pass
