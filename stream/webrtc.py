"""WebRTC settings applied to aiortc: ICE servers, and which host addresses become ICE candidates."""

from __future__ import annotations

import logging

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer

from stream.config import WebRTCSettings

log = logging.getLogger(__name__)

_aioice_default = aioice.ice.get_host_addresses
_AUDIO_JITTER_CAPACITY = 16  # packets, as aiortc's own


def pin_host_addresses(addresses: list[str] | None) -> None:
    """Offer only these addresses as host candidates (None restores aioice's choice).

    aioice has no option for this and never offers 127.0.0.1, so a single-machine setup would send its media
    over another interface; the setting is process-wide because aioice reads a module-level function."""
    if addresses is None:
        aioice.ice.get_host_addresses = _aioice_default
        return
    pinned = list(addresses)

    def pinned_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in pinned if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = pinned_addresses


def rtc_configuration(settings: WebRTCSettings) -> RTCConfiguration:
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(urls=server.urls, username=server.username, credential=server.credential)
            for server in settings.ice_servers
        ]
    )


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
        if not hasattr(receiver, "_RTCRtpReceiver__jitter_buffer"):
            log.warning(
                "this aiortc has no audio jitter buffer to tune; webrtc.audio_prefetch_frames ignored"
            )
            return
        receiver._RTCRtpReceiver__jitter_buffer = JitterBuffer(  # type: ignore[attr-defined]
            capacity=_AUDIO_JITTER_CAPACITY, prefetch=frames
        )
