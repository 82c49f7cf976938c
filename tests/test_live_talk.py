"""Live while people talk: interim updates during long speech, a stalled sender, listeners' reactions."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.harness import EventLog, ServerProcess, assert_call_events_valid, events_url
from tests.media import SPEECH_RATE, Speech, compose, word_error_rate
from tests.peer import PatternTrack, Peer, SpeechTrack
from tests.synth import render_clip

pytestmark = pytest.mark.slow

# One turn of about 7 s: two sentences with a breath between them that is shorter than min_silence (0.5 s)
LONG_TURN = [
    "I have been thinking about the plan for the new clinic all week long.",
    "We should open it in the spring, when the weather is warmer.",
]


@pytest.fixture(scope="module")
def long_turn() -> Speech:
    return compose(LONG_TURN, lead_s=0.6, pause_s=0.3, tail_s=1.5)


async def test_long_speech_gets_interim_transcripts_replaced_by_the_final_one(
    server: ServerProcess, long_turn: Speech, event_validator
) -> None:
    call = "call-interim"
    async with (
        EventLog(events_url(server, call)) as events,
        EventLog(events_url(server, call, v="1")) as old_client,
    ):
        peer = Peer(server.url, call, "una")
        audio = SpeechTrack(long_turn.samples, SPEECH_RATE)
        await peer.join(audio)
        await events.wait_for("emotion", timeout=40)
        await peer.leave()
        await events.wait_for("participant.leave", timeout=30)

    assert_call_events_valid(events.messages, event_validator)
    (final,) = events.of_type("utterance")
    assert final["final"] is True and final["closed_by"] == "silence"
    interim = events.interim("utterance")
    turn_s = long_turn.spans[-1][1] - long_turn.spans[0][0]
    assert len(interim) >= 2, (turn_s, [u["text"] for u in interim])
    assert {u["utterance"] for u in interim} == {final["utterance"]}
    assert all(u["seq"] < final["seq"] for u in interim)  # the final one replaces them, never the reverse
    assert all("closed_by" not in u for u in interim)
    # each interim text is the speech so far: growing, and the last one covers most of the final words
    assert [u["t1"] for u in interim] == sorted(u["t1"] for u in interim)
    # sent while the speech was open: before the close, which comes min_silence (0.5 s) after the speech end.
    # (The last one may reach past the final t1: the close places the end back where the sound died away.)
    assert all(u["t1"] < final["t1"] + 0.5 for u in interim)
    last_words = interim[-1]["text"].split()
    assert word_error_rate(" ".join(final["text"].split()[: len(last_words)]), interim[-1]["text"]) <= 0.3
    # an interim emotion (and face: this peer sends no video, so there is no face event) came before the close
    interim_emotions = events.interim("emotion")
    assert interim_emotions and all(e["seq"] < final["seq"] for e in interim_emotions)
    assert all(e["utterance"] == final["utterance"] and e["final"] is False for e in interim_emotions)
    (emotion,) = events.of_type("emotion")
    assert emotion["final"] is True

    # a subscriber of schema version 1 sees what it always saw: one utterance, no `final` on it
    old_utterances = [m for m in old_client.messages if m["type"] == "utterance"]
    assert [u["text"] for u in old_utterances] == [final["text"]]
    assert all(m["v"] == 1 for m in old_client.messages) and "final" not in old_utterances[0]
    for message in old_client.messages:
        event_validator.validate(message)


async def test_a_sender_that_stops_has_its_speech_closed_and_resumes_on_the_same_clock(
    server: ServerProcess, long_turn: Speech, event_validator
) -> None:
    call, stall_s = "call-stall", 5.0
    start, end = long_turn.spans[0]
    stall_at = start + 0.6 * (end - start)  # in the middle of the first sentence
    async with EventLog(events_url(server, call)) as events:
        peer = Peer(server.url, call, "vic")
        audio = SpeechTrack(long_turn.samples, SPEECH_RATE, stall=(stall_at, stall_s))
        await peer.join(audio)
        # the speech heard before the stall is closed by the stall (closed_by, below), not by the media resuming
        await events.wait_for("utterance", timeout=60)
        while audio.sent_s < long_turn.duration:
            await asyncio.sleep(0.05)
        await peer.leave()
        await events.wait_for("participant.leave", timeout=30)

    assert_call_events_valid(events.messages, event_validator)
    utterances = events.of_type("utterance")
    assert utterances[0]["closed_by"] == "stall", [(u["closed_by"], u["text"]) for u in utterances]
    assert utterances[0]["t1"] <= stall_at + 0.3
    assert len(utterances) >= 2 and utterances[-1]["closed_by"] == "silence"
    # after the gap, media time still counts from the first frame: no overlap, the gap included
    resumed = utterances[1]
    assert resumed["t0"] >= utterances[0]["t1"] + 0.8 * stall_s
    assert all(w["start"] >= resumed["t0"] - 0.5 for w in resumed["words"])
    # the rest of the first sentence and the whole second one are heard after the gap
    heard_after = utterances[-1]["text"].split()[-len(LONG_TURN[1].split()) :]
    assert word_error_rate(LONG_TURN[1], " ".join(heard_after)) <= 0.3


async def test_a_frozen_camera_stops_nothing_else(
    server: ServerProcess, speech: Speech, event_validator
) -> None:
    call = "call-frozen"
    clip = render_clip(expressions=False, duration_s=2.0, fps=15)
    async with EventLog(events_url(server, call)) as events:
        peer = Peer(server.url, call, "wes")
        audio = SpeechTrack(speech.samples, SPEECH_RATE)
        await peer.join(audio, PatternTrack(list(clip.frames), fps=15, stop_after_s=1.0))
        while audio.sent_s < speech.duration:
            await asyncio.sleep(0.05)
        await events.wait_for("emotion", count=len(speech.spans), timeout=30)
        await peer.leave()
        await events.wait_for("participant.leave", timeout=30)

    assert_call_events_valid(events.messages, event_validator)
    utterances, faces = events.of_type("utterance"), events.of_type("face")
    assert len(utterances) == len(speech.spans) and len(events.of_type("emotion")) == len(speech.spans)
    assert [f["utterance"] for f in faces] == [u["utterance"] for u in utterances]
    assert faces[-1]["present"] == 0  # the last sentence came long after the camera froze
    assert events.of_type("participant.leave")[0]["reason"] == "hangup"


async def test_a_listener_with_a_camera_reacts_and_one_without_does_not(
    server: ServerProcess, speech: Speech, event_validator
) -> None:
    call = "call-react"
    start, end = speech.spans[0]
    # bob, listening, smiles in the middle of alice's first sentence (bob's clip is on bob's clock, which starts
    # within a fraction of a second of alice's: both join together)
    smile = (start + 0.25 * (end - start), start + 0.75 * (end - start))
    clip = render_clip(expressions=False, duration_s=speech.duration + 2, fps=15, script=[("smile", *smile)])
    quiet = np.zeros(round((speech.duration + 2) * SPEECH_RATE), np.float32)
    one_sentence = speech.samples[: round((end + 1.0) * SPEECH_RATE)]
    async with EventLog(events_url(server, call)) as events:
        alice, bob, cleo = (Peer(server.url, call, name) for name in ("alice", "bob", "cleo"))
        await asyncio.gather(
            alice.join(SpeechTrack(one_sentence, SPEECH_RATE)),
            bob.join(SpeechTrack(quiet, SPEECH_RATE), PatternTrack(list(clip.frames), fps=15)),
            cleo.join(SpeechTrack(quiet, SPEECH_RATE)),  # camera off
        )
        await events.wait_for("reaction", timeout=40)
        await events.wait_for("emotion", "alice", timeout=10)
        for peer in (alice, bob, cleo):
            await peer.leave()
        await events.wait_for("participant.leave", count=3, timeout=30)

    assert_call_events_valid(events.messages, event_validator)
    (said,) = events.of_type("utterance", "alice")
    (reaction,) = events.of_type(
        "reaction"
    )  # bob's; none from cleo (no camera), none from alice (the speaker)
    assert reaction["participant"] == "bob" and reaction["speaker"] == "alice"
    assert reaction["utterance"] == said["utterance"]
    assert reaction["present"] > 0.8
    smiles = [e for e in reaction["micro"] if e["region"] == "lip_corner_pull"]
    assert smiles, reaction["micro"]
    assert any(reaction["t0"] <= e["onset"] <= reaction["t1"] for e in smiles)
    assert any(abs(e["onset"] - smile[0]) < 0.5 for e in smiles), (smiles, smile)
    assert reaction["valence"] is not None and reaction["valence"] > 0
    # it comes after the speaker's own emotion event for that utterance
    (emotion,) = events.of_type("emotion", "alice")
    assert reaction["seq"] > emotion["seq"]
