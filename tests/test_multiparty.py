"""Three peers in one call are three speakers; one leaving does not disturb the others."""

from __future__ import annotations

import asyncio

import pytest

from tests.harness import EventLog, ServerProcess, assert_call_events_valid, events_url
from tests.media import SPEECH_RATE, Speech, word_error_rate
from tests.peer import Peer, SpeechTrack

pytestmark = pytest.mark.slow


async def test_three_participants_are_analysed_as_three_speakers(
    server: ServerProcess, speech: Speech, event_validator
) -> None:
    names = ["ann", "ben", "cat"]
    async with EventLog(events_url(server, "call-room")) as events:
        peers = [Peer(server.url, "call-room", name) for name in names]
        tracks = [SpeechTrack(speech.samples, SPEECH_RATE) for _ in names]
        await asyncio.gather(*(peer.join(track) for peer, track in zip(peers, tracks, strict=True)))
        # ben hangs up during the first sentence; ann and cat talk on
        start, end = speech.spans[0]
        while tracks[1].sent_s < start + 0.5 * (end - start):
            await asyncio.sleep(0.02)
        await peers[1].leave()
        while min(tracks[0].sent_s, tracks[2].sent_s) < speech.duration:
            await asyncio.sleep(0.05)
        for peer in (peers[0], peers[2]):
            await peer.leave()
        await events.wait_for("participant.leave", count=3, timeout=40)

    assert_call_events_valid(events.messages, event_validator)
    assert {m["participant"] for m in events.of_type("participant.join")} == set(names)
    for name in ("ann", "cat"):
        utterances = events.of_type("utterance", name)
        assert len(utterances) == 2, (name, [u["text"] for u in utterances])
        for utterance, sentence in zip(utterances, speech.sentences, strict=True):
            assert word_error_rate(sentence, utterance["text"]) <= 0.25
    ben = events.of_type("utterance", "ben")
    assert len(ben) == 1 and ben[0]["closed_by"] == "flush"
    ids = [u["utterance"] for u in events.of_type("utterance")]
    assert len(set(ids)) == len(ids)
