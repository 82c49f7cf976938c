"""Every patch of aiortc, aioice and aiohttp internals, in one place: applied explicitly, checked against their
versions."""

from __future__ import annotations

import asyncio
import logging
import threading
from importlib.metadata import version
from typing import Any

import aioice.ice
import av
from aiohttp import web, web_protocol
from aiortc import RTCPeerConnection, rtcrtpreceiver
from aiortc.codecs import get_decoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from stream.serve.auth import redact

log = logging.getLogger(__name__)

# The releases these patches were written against and tested with (major.minor): another release may have
# moved the internals they replace, so start-up says so instead of leaving a setting silently ignored.
WRITTEN_FOR = {"aiortc": "1.16", "aioice": "0.13", "aiohttp": "3.14"}
_AUDIO_JITTER_CAPACITY = 16  # packets, as aiortc's own
_JITTER_BUFFER_ATTRIBUTE = "_RTCRtpReceiver__jitter_buffer"  # RTCRtpReceiver.__jitter_buffer, name-mangled
_DECODER_QUEUE_ATTRIBUTE = "_RTCRtpReceiver__decoder_queue"
_DECODER_ERROR_ATTRIBUTE = "_RTCRtpReceiver__decoder_error"
_aioice_host_addresses = getattr(aioice.ice, "get_host_addresses", None)  # aioice's own, restored by None
_aiohttp_handle_error = web_protocol.RequestHandler.handle_error
_aiortc_decoder_worker = getattr(rtcrtpreceiver, "decoder_worker", None)  # aiortc's own, wrapped


class PatchError(RuntimeError):
    """A patched internal is gone from the installed library: the setting that needs it cannot be honoured."""


def version_mismatches() -> list[str]:
    """One line per library whose installed release is not the one the patches were written for."""
    lines = []
    for package, written_for in WRITTEN_FOR.items():
        installed = version(package)
        if installed != written_for and not installed.startswith(written_for + "."):
            lines.append(f"{package} {installed} is installed; the patches were written for {written_for}.x")
    return lines


def apply(host_addresses: list[str] | None) -> None:
    """Apply the process-wide patches; call once at start-up (the server, a test peer) before any connection.

    host_addresses: the only addresses offered as ICE host candidates (None restores aioice's choice).
    """
    for line in version_mismatches():
        log.warning(
            "%s: check stream/serve/patches.py (ICE host addresses, audio receivers, HTTP errors) still applies",
            line,
        )
    pin_host_addresses(host_addresses)
    answer_malformed_requests_in_json()


def pin_host_addresses(addresses: list[str] | None) -> None:
    """Offer only these addresses as host candidates (None restores aioice's choice).

    aioice has no option for this and never offers 127.0.0.1, so a single-machine setup would send its media
    over another interface; the setting is process-wide because aioice reads a module-level function."""
    if _aioice_host_addresses is None:  # nothing to restore, nothing to pin
        if addresses is None:
            return
        raise PatchError(
            f"aioice {version('aioice')} has no ice.get_host_addresses to replace, so webrtc.host_addresses "
            f"cannot be honoured (stream/serve/patches.py was written for aioice {WRITTEN_FOR['aioice']}.x)"
        )
    if addresses is None:
        aioice.ice.get_host_addresses = _aioice_host_addresses
        return
    pinned = list(addresses)

    def pinned_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in pinned if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = pinned_addresses


def _decoder_worker(loop: asyncio.AbstractEventLoop, input_q: Any, *args: Any) -> None:
    """aiortc's decoder thread, but none for an audio receiver whose frames are decoded on the loop."""
    if isinstance(input_q, AudioDecodedOnLoop):
        return
    assert _aiortc_decoder_worker is not None
    _aiortc_decoder_worker(loop, input_q, *args)


class AudioDecodedOnLoop:
    """Stands in for an audio receiver's decoder queue: each Opus frame put in is decoded at once, on the event
    loop, and handed to the track.

    aiortc decodes in a thread per track: every 20 ms frame goes to that thread and back to the loop, and when the
    cores are busy (a neighbour, transcription, cameras) each hop waits for the CPU and for the GIL. Decoding 20 ms
    of Opus takes tens of microseconds. (Measured under a CPU hog: the audio's lag at the VAD was lower this way
    in 3 of 5 paired runs, README "Speech first under a busy neighbour".)"""

    def __init__(self, track_queue: asyncio.Queue[Any], decode_error: threading.Event) -> None:
        self._out = track_queue
        self._decode_error = decode_error
        self._decoder: Any = None
        self._codec_name: str | None = None

    def put(self, task: tuple[RTCRtpCodecParameters, JitterFrame] | None) -> None:
        if task is None:  # the receiver stops: the track ends
            self._out.put_nowait(None)
            return
        codec, encoded_frame = task
        if codec.name != self._codec_name:
            self._decoder, self._codec_name = get_decoder(codec), codec.name
        try:
            frames = self._decoder.decode(encoded_frame)
        except av.FFmpegError as exc:
            log.warning("audio frame not decoded (%s): %s", codec.name, exc)
            self._decode_error.set()
            return
        for frame in frames:
            self._out.put_nowait(frame)


def tune_audio_receivers(pc: RTCPeerConnection, prefetch_frames: int) -> None:
    """Each audio receiver of `pc` decodes on the event loop (AudioDecodedOnLoop) and releases a frame once
    `prefetch_frames` later ones have arrived (aiortc: 4).

    aiortc holds 4 audio frames (80 ms) to smooth playout; analysis plays nothing out, so the wait is only
    latency. Packets are still put in order and a lost one is still waited for; only the extra hold goes.
    Call after setRemoteDescription (which makes the receivers) and before media flows. aiortc has no
    option for either: its receiver's private buffer and queue are replaced, and a future aiortc without them
    is logged and left as it is.
    """
    for transceiver in pc.getTransceivers():
        if transceiver.kind != "audio":
            continue
        receiver = transceiver.receiver
        names = (_JITTER_BUFFER_ATTRIBUTE, _DECODER_QUEUE_ATTRIBUTE, _DECODER_ERROR_ATTRIBUTE)
        if not all(hasattr(receiver, name) for name in names) or _aiortc_decoder_worker is None:
            log.warning(
                "aiortc %s has no audio jitter buffer or decoder queue to tune (stream/serve/patches.py was written "
                "for %s.x); webrtc.audio_prefetch_frames ignored and audio decoded in aiortc's thread",
                version("aiortc"),
                WRITTEN_FOR["aiortc"],
            )
            return
        rtcrtpreceiver.decoder_worker = _decoder_worker  # type: ignore[assignment]
        setattr(
            receiver,
            _JITTER_BUFFER_ATTRIBUTE,
            JitterBuffer(capacity=_AUDIO_JITTER_CAPACITY, prefetch=prefetch_frames),
        )
        if receiver.track is not None:  # the remote track (made by setRemoteDescription) the frames go to
            decode_error = getattr(receiver, _DECODER_ERROR_ATTRIBUTE)
            decoder = AudioDecodedOnLoop(receiver.track._queue, decode_error)  # type: ignore[attr-defined]
            setattr(receiver, _DECODER_QUEUE_ATTRIBUTE, decoder)


def answer_malformed_requests_in_json() -> None:
    """A request aiohttp cannot parse (a 10 KB request line, a bad header) gets our JSON error and one log line.

    aiohttp answers such requests in text/plain and logs each with a traceback, before any route or middleware
    sees them, and has no option for either; a client can fill the log that way. 5xx keep aiohttp's handling."""

    def handle_error(
        self: web_protocol.RequestHandler,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            return _aiohttp_handle_error(self, request, status, exc, message)
        reason = redact((message or repr(exc))[:200])
        log.warning("malformed HTTP request from %s: %s %s", request.remote, status, reason)
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already sent; cannot send the error")
        response = web.json_response(
            {"error": {"code": "bad_http_request", "message": f"malformed HTTP request: {reason}"}},
            status=status,
        )
        response.force_close()
        return response

    web_protocol.RequestHandler.handle_error = handle_error  # type: ignore[method-assign]
