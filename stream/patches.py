"""Every patch of aiortc, aioice and aiohttp internals, in one place: applied explicitly, checked against their
versions."""

from __future__ import annotations

import logging
import threading
from importlib.metadata import version
from typing import Any

import aioice.ice
from aiohttp import web, web_protocol
from aiortc import RTCPeerConnection, rtcrtpreceiver
from aiortc.jitterbuffer import JitterBuffer

from stream.auth import redact
from stream.threads import lower_this_thread

log = logging.getLogger(__name__)

# The releases these patches were written against and tested with (major.minor): another release may have
# moved the internals they replace, so start-up says so instead of leaving a setting silently ignored.
WRITTEN_FOR = {"aiortc": "1.16", "aioice": "0.13", "aiohttp": "3.14"}
_AUDIO_JITTER_CAPACITY = 16  # packets, as aiortc's own
_JITTER_BUFFER_ATTRIBUTE = "_RTCRtpReceiver__jitter_buffer"  # RTCRtpReceiver.__jitter_buffer, name-mangled
_aioice_host_addresses = getattr(aioice.ice, "get_host_addresses", None)  # aioice's own, restored by None
_aiohttp_handle_error = web_protocol.RequestHandler.handle_error
_aiortc_decoder_worker = getattr(rtcrtpreceiver, "decoder_worker", None)  # aiortc's own, restored by nice 0


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


def apply(host_addresses: list[str] | None, *, video_decoder_nice: int | None = None) -> None:
    """Apply the process-wide patches; call once at start-up (the server, a test peer) before any connection.

    host_addresses: the only addresses offered as ICE host candidates (None restores aioice's choice).
    video_decoder_nice: niceness added to the threads that decode received video (None: left as they are).
    """
    for line in version_mismatches():
        log.warning(
            "%s: check stream/patches.py (ICE host addresses, audio prefetch, video decoders, HTTP errors) "
            "still applies",
            line,
        )
    pin_host_addresses(host_addresses)
    if video_decoder_nice is not None:
        lower_video_decoders(video_decoder_nice)
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
            f"cannot be honoured (stream/patches.py was written for aioice {WRITTEN_FOR['aioice']}.x)"
        )
    if addresses is None:
        aioice.ice.get_host_addresses = _aioice_host_addresses
        return
    pinned = list(addresses)

    def pinned_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in pinned if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = pinned_addresses


def lower_video_decoders(nice: int) -> None:
    """Run the thread that decodes each received video track lowered by `nice` (0 restores aiortc's own).

    aiortc decodes every frame of every camera (VP8 frames depend on the ones before, so none can be skipped) in
    a thread per track at normal priority, where under load it competes with the event loop (VAD, speech.end)
    and transcription. aiortc has no option for it: the module function its receivers start as that thread's
    target is wrapped; the thread is aiortc's `video-decoder` (audio decoding, on the speech path, is left be)."""
    if _aiortc_decoder_worker is None:
        if nice == 0:
            return
        raise PatchError(
            f"aiortc {version('aiortc')} has no rtcrtpreceiver.decoder_worker to wrap, so video.decoder_nice "
            f"cannot be honoured (stream/patches.py was written for aiortc {WRITTEN_FOR['aiortc']}.x)"
        )
    if nice == 0:
        rtcrtpreceiver.decoder_worker = _aiortc_decoder_worker
        return
    original = _aiortc_decoder_worker

    def decoder_worker(*args: Any, **kwargs: Any) -> None:
        if threading.current_thread().name.startswith("video"):  # aiortc names it f"{kind}-decoder"
            lower_this_thread(nice, "video-decoder")
        original(*args, **kwargs)

    rtcrtpreceiver.decoder_worker = decoder_worker


def set_audio_prefetch(pc: RTCPeerConnection, frames: int) -> None:
    """Let each audio receiver of `pc` release a frame once `frames` later ones have arrived (aiortc: 4).

    aiortc holds 4 audio frames (80 ms) to smooth playout; analysis plays nothing out, so the wait is only
    latency. Packets are still put in order and a lost one is still waited for; only the extra hold goes.
    Call after setRemoteDescription (which makes the receivers) and before media flows. aiortc has no
    option for it: its receiver's private buffer is replaced, and a future aiortc without it is logged.
    """
    for transceiver in pc.getTransceivers():
        if transceiver.kind != "audio":
            continue
        receiver = transceiver.receiver
        if not hasattr(receiver, _JITTER_BUFFER_ATTRIBUTE):
            log.warning(
                "aiortc %s has no audio jitter buffer to tune (stream/patches.py was written for %s.x); "
                "webrtc.audio_prefetch_frames ignored",
                version("aiortc"),
                WRITTEN_FOR["aiortc"],
            )
            return
        setattr(
            receiver, _JITTER_BUFFER_ATTRIBUTE, JitterBuffer(capacity=_AUDIO_JITTER_CAPACITY, prefetch=frames)
        )


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
