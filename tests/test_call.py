"""A real aiortc peer streams synthesised speech; a websocket subscriber receives the call's events."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.harness import (
    EventLog,
    ServerProcess,
    assert_call_events_valid,
    closing_seqs,
    events_url,
    is_interim,
)
from tests.media import SPEECH_RATE, Speech, word_error_rate
from tests.peer import stream_speech

pytestmark = pytest.mark.slow


async def test_two_sentences_become_two_transcribed_utterances(
    server: ServerProcess, speech: Speech, event_validator
) -> None:
    async with EventLog(events_url(server, "call-main")) as events:
        await stream_speech(server.url, "call-main", "alice", speech.samples, SPEECH_RATE)
        await events.wait_for("participant.leave", timeout=30)

    assert_call_events_valid(events.messages, event_validator)
    types = [m["type"] for m in events.messages]
    assert types[0] == "participant.join" and types[-1] == "participant.leave"
    assert events.messages[0]["tracks"] == ["audio", "video"]
    assert events.messages[-1]["reason"] == "hangup"
    assert types.count("speech.start") == types.count("speech.end") == 2

    utterances = events.of_type("utterance")
    assert len(utterances) == 2
    for utterance, sentence, (start, end) in zip(utterances, speech.sentences, speech.spans, strict=True):
        assert word_error_rate(sentence, utterance["text"]) <= 0.25, utterance["text"]
        assert utterance["t0"] == pytest.approx(start, abs=0.3)
        assert utterance["t1"] == pytest.approx(end, abs=0.3)
        assert utterance["words"], "word times expected"
        assert start - 0.3 <= utterance["words"][0]["start"] <= utterance["words"][-1]["end"] <= end + 0.3
        assert utterance["lang"] == "en"

    # each utterance is followed by its face evidence, then one emotion estimate (after any interim update)
    emotions = events.of_type("emotion")
    assert [e["utterance"] for e in emotions] == [u["utterance"] for u in utterances]
    closed = closing_seqs(events.messages)
    for emotion in emotions:
        about = [m for m in events.messages if m.get("utterance") == emotion["utterance"]]
        order = [m["type"] for m in about if not is_interim(m, closed)]
        assert order == ["utterance", "face", "emotion"]
        assert all(m["seq"] < closed[emotion["utterance"]] for m in about if is_interim(m, closed))
        assert emotion["labels"] and emotion["final"] is True and emotion["model"]
        assert emotion["clues"]["text"]["transcript"]
        assert emotion["clues"]["visual"] is None  # the test pattern has no face: absent, not imputed
    assert emotions[0]["valence"] > 0  # "That is wonderful news, I love it."


async def test_peer_dropped_mid_utterance_gets_its_partial_utterance_then_leave(
    server: ServerProcess, speech: Speech, event_validator
) -> None:
    second_start, second_end = speech.spans[1]
    drop_at = second_start + 0.6 * (second_end - second_start)
    async with EventLog(events_url(server, "call-drop")) as events:
        await stream_speech(
            server.url, "call-drop", "bob", speech.samples, SPEECH_RATE, hang_up_after_s=drop_at
        )
        await events.wait_for("participant.leave", timeout=30)

    assert_call_events_valid(events.messages, event_validator)
    utterances = events.of_type("utterance")
    assert len(utterances) == 2
    partial = utterances[1]
    assert partial["closed_by"] == "flush"
    assert partial["t1"] <= drop_at + 0.3
    spoken = speech.sentences[1].lower().split()[:3]
    assert any(word in partial["text"].lower() for word in spoken), partial["text"]
    types = [m["type"] for m in events.messages]
    assert types.index("participant.leave") > types.index("utterance", types.index("utterance") + 1)
    assert types[-1] == "participant.leave"


async def test_bad_input_gets_clear_errors_while_a_healthy_call_streams(
    server: ServerProcess, speech: Speech, event_validator
) -> None:
    import aiohttp
    from websockets.asyncio.client import connect

    async with EventLog(events_url(server, "call-healthy")) as healthy:
        # a subscriber that never reads, on the same call
        stalled = await connect(events_url(server, "call-healthy"), max_queue=1)
        streaming = asyncio.create_task(
            stream_speech(server.url, "call-healthy", "carol", speech.samples, SPEECH_RATE)
        )
        async with aiohttp.ClientSession() as http:
            offer = {"sdp": "v=0\r\nnot really sdp\r\n", "type": "offer", "call": "c1", "participant": "p1"}
            cases = [
                (dict(json=offer), 400, "bad_sdp"),
                (dict(json={**offer, "sdp": ""}), 400, "bad_sdp"),
                (dict(json={"type": "offer", "call": "c1", "participant": "p1"}), 400, "missing_field"),
                (dict(json={**offer, "type": "answer"}), 400, "bad_type"),
                (dict(json={**offer, "call": "bad id!"}), 400, "bad_call"),
                (dict(json={**offer, "participant": "x" * 65}), 400, "bad_participant"),
                (dict(data="sdp", headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type"),
                (dict(data="{not json", headers={"Content-Type": "application/json"}), 400, "bad_json"),
                (dict(json=[1, 2]), 400, "bad_request"),
            ]
            for kwargs, status, code in cases:
                async with http.post(f"{server.url}/offer", **kwargs) as response:
                    assert response.status == status, (kwargs, await response.text())
                    assert (await response.json())["error"]["code"] == code
            async with http.get(f"{server.url}/events?call=bad%20id") as response:
                assert response.status == 400
                assert (await response.json())["error"]["code"] == "bad_call"
            async with http.get(f"{server.url}/events?call=ok&types=utterance,nonsense") as response:
                assert response.status == 400
            async with http.get(f"{server.url}/nowhere") as response:
                assert response.status == 404
                assert "error" in await response.json()

        async with EventLog(events_url(server, "call-garbage")) as garbage:
            for text in ["not json", '{"type": "subscribe"}', "[]", '{"type": "ping"}']:
                await garbage.send(text)
            await garbage.wait_for("pong", timeout=5)
            errors = garbage.of_type("error")
            assert len(errors) == 3 and all(e["code"] == "bad_message" for e in errors)
            for message in garbage.messages:
                event_validator.validate(message)

        await streaming
        await healthy.wait_for("participant.leave", timeout=30)
        await stalled.close()

    assert len(healthy.of_type("utterance")) == 2
    assert_call_events_valid(healthy.messages, event_validator)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/healthz") as response:
            assert response.status == 200


async def test_schema_is_served(server: ServerProcess, event_validator) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{server.url}/schema/events.json") as response:
            assert response.status == 200
            served = await response.json(content_type=None)
    assert served == event_validator.schema


def test_speech_fixture_has_the_scripted_pause(speech: Speech) -> None:
    (_, end1), (start2, _) = speech.spans
    assert start2 - end1 == pytest.approx(1.2, abs=0.01)
    assert np.max(np.abs(speech.samples)) > 0.1
