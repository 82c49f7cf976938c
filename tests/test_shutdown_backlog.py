"""A shutdown while the ASR is behind (issue 23): every utterance heard is delivered, transcribed or marked as not
transcribed (emotion omitted, an error saying why), every participant gets its leave, and the exit is clean."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_CONFIG
from tests.harness import EventLog, ServerProcess, assert_call_events_valid, events_url
from tests.media import SPEECH_RATE, Speech
from tests.peer import Peer, SpeechTrack

pytestmark = pytest.mark.slow

# On two cores the tiny Whisper keeps up with about six speakers: fourteen leave a backlog. A short shutdown
# timeout (the media drain alone takes 0.5 s) makes sure the shutdown cannot wait for all of it.
SPEAKERS = 14
CONFIG: dict[str, Any] = {
    **TEST_CONFIG,
    "video": {"enabled": False},
    "server": {"shutdown_timeout_s": 0.5},
    "webrtc": {**TEST_CONFIG["webrtc"], "offer_burst_per_client": 100, "pending_offers_per_client": 100},
}


@pytest.mark.parametrize("how", ["sigint", "sigterm_twice"])
async def test_a_shutdown_behind_the_asr_delivers_every_utterance_and_every_leave(
    how: str, tmp_path: Path, speech: Speech, event_validator
) -> None:
    server = ServerProcess(CONFIG, tmp_path)
    peers = [Peer(server.url, "call-busy", f"s{i}") for i in range(SPEAKERS)]
    tracks = [SpeechTrack(speech.samples, SPEECH_RATE) for _ in peers]
    try:
        async with EventLog(events_url(server, "call-busy")) as events:
            await asyncio.gather(*(peer.join(track) for peer, track in zip(peers, tracks, strict=True)))
            # everyone well into the second sentence: the first ones wait on the ASR, the second ones are open
            start, end = speech.spans[1]
            while min(track.sent_s for track in tracks) < start + 0.6 * (end - start):
                await asyncio.sleep(0.05)
            if how == "sigint":
                server.process.send_signal(signal.SIGINT)
            else:
                server.process.send_signal(signal.SIGTERM)  # a drain ...
                await asyncio.sleep(0.3)
                server.process.send_signal(signal.SIGTERM)  # ... cut short at once
            code = await asyncio.to_thread(server.process.wait, 120)
            with contextlib.suppress(TimeoutError):  # what the server sent before it went is read to the end
                await events.wait_for("participant.leave", count=SPEAKERS, timeout=10)
    finally:
        await asyncio.gather(*(peer.leave() for peer in peers))
        if server.process.poll() is None:
            server.stop()

    assert code == 0, server.log_path.read_text()[-3000:]
    messages = events.messages
    assert_call_events_valid(messages, event_validator)
    utterances = events.of_type("utterance")
    for peer in peers:
        mine = [m for m in messages if m["participant"] == peer.participant]
        # every utterance opened is closed and delivered, and the leave comes last
        opened = [m for m in mine if m["type"] == "speech.start"]
        closed = [u for u in utterances if u["participant"] == peer.participant]
        assert len(opened) == len(closed) == 2, [(m["type"], m.get("text")) for m in mine]
        assert [m["type"] for m in mine].count("participant.leave") == 1
        assert mine[-1]["type"] == "participant.leave" and mine[-1]["reason"] == "server_shutdown"

    errors = Counter((m["code"], m.get("utterance")) for m in events.of_type("error"))
    emotions = {m["utterance"] for m in events.of_type("emotion")}
    cut = [u for u in utterances if u.get("transcribed") is False]
    assert cut, "the shutdown was expected to cut the ASR backlog short"
    for utterance in cut:
        uid = utterance["utterance"]
        assert (utterance["text"], utterance["words"]) == ("", [])
        assert errors[("not_transcribed", uid)] == 1 and uid not in emotions
    for utterance in utterances:
        if utterance.get("transcribed") is not False:  # transcribed: its emotion, or an error saying why not
            uid = utterance["utterance"]
            assert utterance["text"].strip()
            assert (uid in emotions) != (errors[("not_estimated", uid)] == 1)
