"""WebRTC settings applied to aiortc: the ICE servers of each peer connection (patches: stream/serve/patches.py)."""

from __future__ import annotations

from aiortc import RTCConfiguration, RTCIceServer

from stream.config import WebRTCSettings


def rtc_configuration(settings: WebRTCSettings) -> RTCConfiguration:
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(urls=server.urls, username=server.username, credential=server.credential)
            for server in settings.ice_servers
        ]
    )
