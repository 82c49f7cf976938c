"""POST /offer answers a bad offer with a 400 and its own failure with a 500, and keeps serving after either."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiortc import RTCPeerConnection

from model.audio.whisper import Transcript
from stream.config import Settings
from stream.serve import patches, server

SETTINGS = {
    "webrtc": {"host_addresses": ["127.0.0.1"], "ice_servers": []},
    "video": {"enabled": False},
    "emotion": {"enabled": False},
}


class SilentTranscriber:
    name = "silent"

    def transcribe(self, pcm: np.ndarray, t_offset: float, words: bool = True) -> Transcript:
        return Transcript(text="", words=(), lang="en")


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    app = server.create_app(Settings.model_validate(SETTINGS), transcriber=SilentTranscriber())
    async with TestClient(TestServer(app)) as client:
        yield client


async def audio_offer() -> str:
    """A real offer with one audio track, from a peer that never connects."""
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def offer_body(sdp: str, call: str = "call-1") -> dict[str, str]:
    return {"sdp": sdp, "type": "offer", "call": call, "participant": "alice"}


async def test_a_failure_to_build_the_session_is_a_500_logged_with_its_call(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_session(*args: object, **kwargs: object) -> None:
        raise RuntimeError("session factory broke")

    monkeypatch.setattr(server, "build_session", broken_session)
    with caplog.at_level(logging.ERROR, logger="stream.serve.server"):
        response = await client.post("/offer", json=offer_body(await audio_offer(), call="call-broken"))
    assert response.status == 500
    error = (await response.json())["error"]
    assert error["code"] == "internal" and "see the server log" in error["message"]
    (record,) = caplog.records
    assert record.call == "call-broken" and record.participant == "alice"
    assert record.exc_info is not None and "session factory broke" in str(record.exc_info[1])

    monkeypatch.undo()  # the server still serves: the next offer is answered
    response = await client.post("/offer", json=offer_body(await audio_offer(), call="call-next"))
    assert response.status == 200, await response.text()
    assert (await client.get("/healthz")).status == 200


async def test_a_failure_after_the_offer_was_read_is_a_500_and_leaves_no_session(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_tuning(pc: RTCPeerConnection, frames: int) -> None:
        raise RuntimeError("tuning broke")

    monkeypatch.setattr(patches, "tune_audio_receivers", broken_tuning)
    response = await client.post("/offer", json=offer_body(await audio_offer()))
    assert response.status == 500 and (await response.json())["error"]["code"] == "internal"
    assert client.app[server.SERVICES].sessions == {}


@pytest.mark.parametrize(
    "sdp",
    [
        "v=0\r\nnot really sdp\r\n",  # parses, but carries no track
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
        "c=IN IP4 0.0.0.0\r\na=rtpmap:111 opus/48000/2\r\na=mid:0\r\n",  # no ICE credentials
    ],
)
async def test_an_offer_aiortc_cannot_use_is_still_a_400(client: TestClient, sdp: str) -> None:
    response = await client.post("/offer", json=offer_body(sdp))
    assert response.status == 400 and (await response.json())["error"]["code"] == "bad_sdp"
    assert client.app[server.SERVICES].sessions == {}
