"""Admission and identity under concurrent offers (issue 23): a place and a participant id are taken at the
offer's start, so offers sent at once cannot all see the same free place or the same free id."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from stream.serve import patches
from tests.conftest import TEST_CONFIG
from tests.harness import EventLog, ServerProcess, assert_call_events_valid, events_url
from tests.media import SPEECH_RATE, Speech
from tests.peer import SpeechTrack
from tests.test_admission import health

pytestmark = pytest.mark.slow

OFFERS = 20
# the per-client offer limits raised, so that they do not hide the cap on participants
CONFIG: dict[str, Any] = {
    **TEST_CONFIG,
    "video": {"enabled": False},
    "webrtc": {
        **TEST_CONFIG["webrtc"],
        "offer_burst_per_client": 100,
        "offers_per_client_per_s": 100.0,
        "pending_offers_per_client": 100,
        "pending_offers": 100,
    },
}


class OfferingPeer:
    """A real aiortc peer whose offer is made first, so that many can be POSTed at the same moment."""

    def __init__(self, call: str, participant: str, speech: Speech) -> None:
        patches.apply(["127.0.0.1"])
        self.call, self.participant = call, participant
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTrack(SpeechTrack(speech.samples, SPEECH_RATE))
        self.connected = asyncio.Event()
        self.pc.on("connectionstatechange", self._on_state)

    def _on_state(self) -> None:
        if self.pc.connectionState == "connected":
            self.connected.set()

    async def make_offer(self) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())

    async def post(self, http: aiohttp.ClientSession, base_url: str) -> tuple[int, dict[str, Any]]:
        body = {
            "sdp": self.pc.localDescription.sdp,
            "type": "offer",
            "call": self.call,
            "participant": self.participant,
        }
        async with http.post(f"{base_url}/offer?call={self.call}", json=body) as response:
            return response.status, await response.json()

    async def connect(self, answer: dict[str, Any]) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        await asyncio.wait_for(self.connected.wait(), 20)


async def offer_at_once(server: ServerProcess, peers: list[OfferingPeer]) -> list[tuple[int, dict[str, Any]]]:
    """Every peer's offer POSTed at the same moment; their answers, in the peers' order."""
    await asyncio.gather(*(peer.make_offer() for peer in peers))
    connector = aiohttp.TCPConnector(limit=0)  # one connection per offer: none waits for another's answer
    async with aiohttp.ClientSession(connector=connector) as http:
        return await asyncio.gather(*(peer.post(http, server.url) for peer in peers))


async def test_offers_sent_at_once_never_exceed_max_participants(
    tmp_path: Path, speech: Speech, event_validator
) -> None:
    server = ServerProcess({**CONFIG, "server": {"max_participants": 2}}, tmp_path)
    peers = [OfferingPeer("call-race", f"p{i}", speech) for i in range(OFFERS)]
    try:
        async with EventLog(events_url(server, "call-race")) as events:
            answers = await offer_at_once(server, peers)
            statuses = Counter(status for status, _ in answers)
            assert statuses == {200: 2, 503: OFFERS - 2}, [(s, a.get("error")) for s, a in answers]
            assert {a["error"]["code"] for s, a in answers if s == 503} == {"full"}
            admitted = [(peer, a) for peer, (s, a) in zip(peers, answers, strict=True) if s == 200]
            await asyncio.gather(*(peer.connect(answer) for peer, answer in admitted))
            await events.wait_for("participant.join", count=2)
            code, body = health(server)
            assert (code, body["status"], body["participants"]) == (503, "full", 2)
            # the places come back when the admitted leave: a refused peer is admitted on its next try
            await asyncio.gather(*(peer.pc.close() for peer, _ in admitted))
            while health(server)[1]["participants"] > 0:
                await asyncio.sleep(0.1)
            late = OfferingPeer("call-race", "late", speech)
            peers.append(late)
            ((status, answer),) = await offer_at_once(server, [late])
            assert status == 200, answer
            await late.connect(answer)
            await events.wait_for("participant.join", count=3)
    finally:
        await asyncio.gather(*(peer.pc.close() for peer in peers))
        server.stop()
    assert_call_events_valid(events.messages, event_validator)
    joined = [m["participant"] for m in events.of_type("participant.join")]
    assert len(joined) == 3 and joined[2] == "late"


async def test_one_participant_id_offered_twice_at_once_is_admitted_once(
    tmp_path: Path, speech: Speech, event_validator
) -> None:
    server = ServerProcess(CONFIG, tmp_path)
    twins = [OfferingPeer("call-twins", "same", speech) for _ in range(2)]
    try:
        async with EventLog(events_url(server, "call-twins")) as events:
            answers = await offer_at_once(server, twins)
            assert sorted(status for status, _ in answers) == [200, 409], [a.get("error") for _, a in answers]
            ((twin, answer),) = [(t, a) for t, (s, a) in zip(twins, answers, strict=True) if s == 200]
            await twin.connect(answer)
            await events.wait_for("participant.join")
            assert health(server)[1]["participants"] == 1
            third = OfferingPeer("call-twins", "same", speech)  # later, with the first connected: 409 too
            twins.append(third)
            ((status, refusal),) = await offer_at_once(server, [third])
            assert (status, refusal["error"]["code"]) == (409, "participant_exists")
    finally:
        await asyncio.gather(*(twin.pc.close() for twin in twins))
        server.stop()
    assert_call_events_valid(events.messages, event_validator)
    assert [m["participant"] for m in events.of_type("participant.join")] == ["same"]
