"""WebRTC settings applied to aiortc: ICE servers, and which host addresses become ICE candidates."""

from __future__ import annotations

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

from stream.config import WebRTCSettings

_aioice_default = aioice.ice.get_host_addresses


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
