"""Admission and draining with live peers: a full node refuses new participants, SIGTERM drains, calls go on."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from tests.conftest import TEST_CONFIG
from tests.harness import EventLog, ServerProcess, assert_call_events_valid, events_url
from tests.media import SPEECH_RATE, Speech
from tests.peer import Peer, SpeechTrack

pytestmark = pytest.mark.slow

AUDIO_ONLY = {**TEST_CONFIG, "video": {"enabled": False}}


def health(server: ServerProcess) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{server.url}/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def refused(server: ServerProcess, call: str, participant: str) -> tuple[int, str | None, Any]:
    """POST /offer and WHIP with a real offer; (status, Retry-After, JSON error) of /offer, after checking
    that WHIP answered the same."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("audio", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        body = {"sdp": sdp, "type": "offer", "call": call, "participant": participant}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{server.url}/whip/{call}", data=sdp, headers=SDP) as whip:
                whip_answer = (whip.status, whip.headers.get("Retry-After"), await whip.json())
            async with http.post(f"{server.url}/offer?call={call}", json=body) as response:
                answer = (response.status, response.headers.get("Retry-After"), await response.json())
    finally:
        await pc.close()
    assert whip_answer == answer
    return answer


SDP = {"Content-Type": "application/sdp"}


async def speak_until(audio: SpeechTrack, seconds: float) -> None:
    while audio.sent_s < seconds:
        await asyncio.sleep(0.02)


async def test_a_full_node_answers_503_and_keeps_its_calls(
    tmp_path: Path, speech: Speech, event_validator
) -> None:
    server = ServerProcess({**AUDIO_ONLY, "server": {"max_participants": 1, "retry_after_s": 7}}, tmp_path)
    try:
        assert health(server)[1]["status"] == "ok"
        async with EventLog(events_url(server, "call-full")) as events:
            peer = Peer(server.url, "call-full", "ann")
            audio = SpeechTrack(speech.samples, SPEECH_RATE)
            await peer.join(audio)
            status, retry_after, error = await refused(server, "call-other", "bob")
            assert (status, retry_after, error["error"]["code"]) == (503, "7", "full")
            code, body = health(server)
            assert (code, body["status"], body["max_participants"]) == (503, "full", 1)
            await speak_until(audio, speech.duration)  # ann's call goes on as if nothing happened
            await events.wait_for("utterance", count=2, timeout=30)
            await peer.leave()
            await events.wait_for("participant.leave")
        code, body = health(server)
        assert (code, body["status"], body["participants"]) == (200, "ok", 0)  # room again
    finally:
        server.stop()
    assert_call_events_valid(events.messages, event_validator)
    assert [u["text"].strip() != "" for u in events.of_type("utterance")] == [True, True]


async def test_sigterm_drains_live_calls_then_the_server_exits_when_they_end(
    tmp_path: Path, speech: Speech, event_validator
) -> None:
    server = ServerProcess(AUDIO_ONLY, tmp_path)
    try:
        async with EventLog(events_url(server, "call-drain")) as events:
            peer = Peer(server.url, "call-drain", "cy")
            audio = SpeechTrack(speech.samples, SPEECH_RATE)
            await peer.join(audio)
            server.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            code, body = health(server)
            assert (code, body["status"], body["participants"]) == (503, "draining", 1)
            status, retry_after, error = await refused(server, "call-new", "dee")
            assert (status, error["error"]["code"]) == (503, "draining") and retry_after is not None
            await speak_until(audio, speech.duration)  # the live call goes on through the drain
            await events.wait_for("utterance", count=2, timeout=30)
            await peer.leave()  # its end ends the drain
            await events.wait_for("participant.leave")
            assert await asyncio.to_thread(server.process.wait, 20) == 0
    finally:
        if server.process.poll() is None:
            server.stop()
    assert_call_events_valid(events.messages, event_validator)
    assert all(u["closed_by"] != "flush" for u in events.of_type("utterance"))  # both ended by silence
    assert events.of_type("participant.leave")[0]["reason"] == "hangup"


@pytest.mark.parametrize("how", ["drain_timeout", "second_sigterm"])
async def test_a_drain_cut_short_flushes_the_open_utterance(
    how: str, tmp_path: Path, speech: Speech, event_validator
) -> None:
    timeout_s = 1.0 if how == "drain_timeout" else 600
    server = ServerProcess({**AUDIO_ONLY, "server": {"drain_timeout_s": timeout_s}}, tmp_path)
    try:
        async with EventLog(events_url(server, "call-cut")) as events:
            peer = Peer(server.url, "call-cut", "eve")
            audio = SpeechTrack(speech.samples, SPEECH_RATE)
            await peer.join(audio)
            start, end = speech.spans[0]
            await speak_until(audio, start + 0.2 * (end - start))
            server.process.send_signal(signal.SIGTERM)
            if how == "second_sigterm":
                await asyncio.sleep(0.3)
                server.process.send_signal(signal.SIGTERM)
            await events.wait_for("participant.leave", timeout=20)  # mid-sentence: the drain ended first
            await peer.leave()
        assert await asyncio.to_thread(server.process.wait, 20) == 0
    finally:
        if server.process.poll() is None:
            server.stop()
    assert_call_events_valid(events.messages, event_validator)
    (utterance,) = events.of_type("utterance")
    assert utterance["closed_by"] == "flush" and utterance["text"].strip()
    assert events.messages[-1]["reason"] == "server_shutdown"
