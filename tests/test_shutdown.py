"""A server stopped mid-call closes every peer cleanly and loses nothing already heard."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from tests.conftest import TEST_CONFIG
from tests.harness import EventLog, ServerProcess, assert_call_events_valid, events_url
from tests.media import SPEECH_RATE, Speech
from tests.peer import Peer, SpeechTrack

pytestmark = pytest.mark.slow


async def test_shutdown_mid_utterance_flushes_it_and_says_goodbye(
    tmp_path: Path, speech: Speech, event_validator
) -> None:
    server = ServerProcess(TEST_CONFIG, tmp_path)
    try:
        async with EventLog(events_url(server, "call-stop")) as events:
            peer = Peer(server.url, "call-stop", "dave")
            audio = SpeechTrack(speech.samples, SPEECH_RATE)
            await peer.join(audio)
            start, end = speech.spans[0]
            while audio.sent_s < start + 0.7 * (end - start):
                await asyncio.sleep(0.02)
            server.process.send_signal(signal.SIGINT)
            await events.wait_for("participant.leave", timeout=20)
            await peer.leave()
        assert await asyncio.to_thread(server.process.wait, 20) == 0
    finally:
        if server.process.poll() is None:
            server.stop()

    assert_call_events_valid(events.messages, event_validator)
    (utterance,) = events.of_type("utterance")
    assert utterance["closed_by"] == "flush"
    assert utterance["text"].strip()
    leave = events.messages[-1]
    assert leave["type"] == "participant.leave" and leave["reason"] == "server_shutdown"
