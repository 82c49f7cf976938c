"""Live: a real peer streams a rendered face with speech; the `face` event of each utterance reports it."""

from __future__ import annotations

import asyncio

import pytest

from tests.harness import EventLog, ServerProcess, assert_call_events_valid, events_url
from tests.media import SPEECH_RATE, Speech
from tests.peer import PatternTrack, Peer, SpeechTrack
from tests.synth import render_clip

pytestmark = pytest.mark.slow


async def test_face_event_reports_the_brow_raise_of_the_first_utterance(
    server: ServerProcess, speech: Speech, event_validator
) -> None:
    clip = render_clip(duration_s=4.0, fps=30)  # brow raise 1.00-1.30 s (micro), smile 2.0-3.5 s (macro)
    first_start, first_end = speech.spans[0]
    assert first_start < 1.0 and 1.3 < first_end  # the first sentence covers the brow raise

    async with EventLog(events_url(server, "call-face")) as events:
        peer = Peer(server.url, "call-face", "ivy")
        audio = SpeechTrack(speech.samples, SPEECH_RATE)
        await peer.join(audio, PatternTrack(list(clip.frames), fps=30))
        while audio.sent_s < speech.duration:
            await asyncio.sleep(0.05)
        await peer.leave()
        await events.wait_for("participant.leave", timeout=30)

    assert_call_events_valid(events.messages, event_validator)
    utterances, faces = events.of_type("utterance"), events.of_type("face")
    assert [f["utterance"] for f in faces] == [u["utterance"] for u in utterances]
    types = [m["type"] for m in events.messages]
    for face in faces:  # each face event comes right after its utterance
        index = next(i for i, m in enumerate(events.messages) if m is face)
        assert types[index - 1] == "utterance"

    first = faces[0]
    assert first["present"] > 0.8
    brow = [e for e in first["micro"] if e["region"].startswith("brow_") and e["region"] != "brow_lower"]
    assert brow, first["micro"]
    assert any(abs(e["onset"] - 1.0) <= 0.2 and e["kind"] == "micro" for e in brow), brow
    assert "lip_corner_pull" in first["regions"]


async def test_audio_only_participant_says_no_face(
    server: ServerProcess, speech: Speech, event_validator
) -> None:
    async with EventLog(events_url(server, "call-noface")) as events:
        peer = Peer(server.url, "call-noface", "jay")
        audio = SpeechTrack(
            speech.samples[: round(speech.spans[0][1] * SPEECH_RATE) + SPEECH_RATE], SPEECH_RATE
        )
        await peer.join(audio, None)
        await events.wait_for("face", timeout=30)
        await peer.leave()
        await events.wait_for("participant.leave", timeout=30)
    assert_call_events_valid(events.messages, event_validator)
    (face,) = events.of_type("face")
    assert face["present"] == 0 and face["micro"] == [] and face["track"] is None
