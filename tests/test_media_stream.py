"""Phone lines: μ-law decoding, chunk order and gaps, and a real server taking Twilio media streams."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from clients.phone_stream import TwilioMessages, encode_mulaw, mulaw_chunks, stream_call
from stream.serve.media_stream import (
    MULAW_TO_PCM,
    MediaChunk,
    PhoneTrack,
    Reorder,
    StreamError,
    StreamStart,
    decode_mulaw,
    parse_message,
)
from tests.conftest import TEST_CONFIG
from tests.harness import EventLog, ServerProcess, assert_call_events_valid, events_url
from tests.media import SPEECH_RATE, Speech, librivox_reading, word_error_rate


def pcm_8k(speech: Speech) -> np.ndarray:
    """The speech as 8 kHz int16, as a phone network carries it."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=8000)
    frame = av.AudioFrame.from_ndarray(speech.samples[None, :], format="flt", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = SPEECH_RATE, 0, Fraction(1, SPEECH_RATE)
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out).astype(np.int16)


def media(track: str, chunk: int, samples: int = 160, value: int = 1000) -> MediaChunk:
    return MediaChunk(track, chunk, (chunk - 1) * 20, np.full(samples, value + chunk, np.int16))


# -- μ-law ---------------------------------------------------------------------------------------
def test_mulaw_table_matches_ffmpegs_g711_decoder() -> None:
    decoder = av.CodecContext.create("pcm_mulaw", "r")
    decoder.sample_rate, decoder.layout = 8000, "mono"  # type: ignore[attr-defined]
    frames = decoder.decode(av.Packet(bytes(range(256))))  # type: ignore[attr-defined]
    reference = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    np.testing.assert_array_equal(MULAW_TO_PCM, reference)
    assert MULAW_TO_PCM[0xFF] == 0 and MULAW_TO_PCM[0x80] == 32124 and MULAW_TO_PCM[0x00] == -32124


def test_mulaw_round_trip_stays_within_its_quantisation_step() -> None:
    pcm = np.linspace(-32000, 32000, 8000).astype(np.int16)
    decoded = decode_mulaw(b"".join(encode_mulaw(pcm)))[: len(pcm)].astype(np.int32)
    # G.711 μ-law: 8 segments, quantisation step 2**(segment + 3); a round trip stays within one step
    segment = np.clip(np.floor(np.log2((np.abs(pcm.astype(np.int32)) + 132) / 132)), 0, 7)
    assert np.all(np.abs(decoded - pcm) <= 2 ** (segment + 3))


# -- messages ------------------------------------------------------------------------------------
def test_twilio_messages_parse_into_start_and_media() -> None:
    messages = TwilioMessages(["inbound", "outbound"], {"participant": "ann"})
    start = parse_message(messages.start())
    assert isinstance(start, StreamStart)
    assert start.tracks == ("inbound", "outbound") and start.parameters == {"participant": "ann"}
    chunk = parse_message(messages.media("outbound", 4, bytes([0xFF, 0x80, 0x00])))
    assert isinstance(chunk, MediaChunk)
    assert (chunk.track, chunk.chunk, chunk.timestamp_ms) == ("outbound", 5, 80)
    assert chunk.samples.tolist() == [0, 32124, -32124]


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("{not json", "bad_json"),
        ('{"event": "hello"}', "unknown_event"),
        ('{"event": "media", "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": "@@"}}',
         "bad_payload"),
        ('{"event": "media", "media": {"track": "inbound", "timestamp": "0", "payload": ""}}', "bad_message"),
        ('{"event": "media", "media": {"track": "inbound", "chunk": "\u00b2", "timestamp": "0", "payload": ""}}',
         "bad_message"),
        ('{"event": "start", "start": {"tracks": ["inbound"], "mediaFormat": '
         '{"encoding": "audio/x-l16", "sampleRate": 16000, "channels": 1}}}', "bad_media_format"),
        ('{"event": "start", "start": {"tracks": ["sideways"], "mediaFormat": '
         '{"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}', "bad_tracks"),
    ],
)  # fmt: skip
def test_malformed_messages_are_named(message: str, code: str) -> None:
    with pytest.raises(StreamError) as error:
        parse_message(message)
    assert error.value.code == code


# -- order and gaps ------------------------------------------------------------------------------
def test_chunks_out_of_order_are_put_back_in_order() -> None:
    reorder = Reorder(window=3)
    out = [c.chunk for n in (1, 3, 2, 5, 4, 6) for c in reorder.push(media("inbound", n))]
    assert out == [1, 2, 3, 4, 5, 6] and reorder.late == 0 and reorder.lost == 0


def test_a_missing_chunk_is_given_up_past_the_window_and_a_late_one_dropped() -> None:
    reorder = Reorder(window=2)
    out = [c.chunk for n in (1, 3, 4) for c in reorder.push(media("inbound", n))]
    assert out == [1]  # 2 may still come
    out += [c.chunk for c in reorder.push(media("inbound", 5))]
    assert out == [1, 3, 4, 5] and reorder.lost == 1
    assert reorder.push(media("inbound", 2)) == [] and reorder.late == 1
    assert reorder.push(media("inbound", 5)) == [] and reorder.late == 2  # a duplicate


async def test_phone_track_fills_a_lost_chunk_with_silence_on_the_media_clock() -> None:
    track = PhoneTrack(reorder_window=1)
    for n in (1, 2, 4, 5, 6):  # chunk 3 never comes
        track.push(media("inbound", n))
    track.end()
    frames = []
    with pytest.raises(MediaStreamError):
        while True:
            frames.append(await track.recv())
    assert all(f.sample_rate == 8000 and f.time_base == Fraction(1, 8000) for f in frames)
    starts = [f.pts for f in frames]
    assert starts == [0, 160, 320, 480, 640, 800]  # the gap is a frame of its own
    ends = [f.pts + f.samples for f in frames]
    assert starts[1:] == ends[:-1]  # contiguous: media time is the caller's time
    assert not frames[2].to_ndarray().any() and track.lost == 1


# -- a real server -------------------------------------------------------------------------------
def media_url(server: ServerProcess, call: str) -> str:
    return f"ws://127.0.0.1:{server.port}/media/{call}"


async def stream_over_a_bad_network(
    url: str, caller: list[bytes], callee: list[bytes], callee_spans: list[tuple[float, float]]
) -> None:
    """Both tracks at real time; the callee's chunks as a bad network delivers them: each pair swapped, and
    outside its speech (`callee_spans`, s) every third one never sent."""

    def lost(i: int) -> bool:
        return i % 3 == 2 and not any(start - 0.1 < i * 0.02 < end + 0.1 for start, end in callee_spans)

    twilio = TwilioMessages(["inbound", "outbound"], {})
    sends = [(i, "inbound", i, chunk) for i, chunk in enumerate(caller)]
    sends += [(i ^ 1, "outbound", i, chunk) for i, chunk in enumerate(callee) if not lost(i)]
    async with connect(url) as ws:
        await ws.send(twilio.connected())
        await ws.send(twilio.start())
        began = time.monotonic()
        for slot, track, index, payload in sorted(sends, key=lambda send: send[0]):
            await asyncio.sleep(max(0.0, began + slot * 0.02 - time.monotonic()))
            await ws.send(twilio.media(track, index, payload))
        await ws.send(twilio.stop())


@pytest.mark.slow
async def test_both_tracks_of_a_phone_call_are_two_participants_of_one_call(
    server: ServerProcess, speech: Speech, event_validator
) -> None:
    chunks = encode_mulaw(pcm_8k(speech))
    # the callee says the same sentences 1.5 s later (both tracks carry speech at once), over a bad network
    lead_s = 1.5
    callee = encode_mulaw(np.zeros(round(lead_s * 8000), np.int16)) + chunks
    async with EventLog(events_url(server, "call-phone")) as events:
        callee_spans = [(start + lead_s, end + lead_s) for start, end in speech.spans]
        await stream_over_a_bad_network(media_url(server, "call-phone"), chunks, callee, callee_spans)
        await events.wait_for("participant.leave", count=2, timeout=40)

    assert_call_events_valid(events.messages, event_validator)
    joins = events.of_type("participant.join")
    assert sorted(m["participant"] for m in joins) == ["callee", "caller"]
    assert all(m["tracks"] == ["audio"] for m in joins)
    assert {m["reason"] for m in events.of_type("participant.leave")} == {"hangup"}
    for participant, offset_s in (("caller", 0.0), ("callee", lead_s)):
        utterances = events.of_type("utterance", participant)
        assert len(utterances) == len(speech.sentences), [u["text"] for u in utterances]
        for utterance, sentence, (_, end) in zip(utterances, speech.sentences, speech.spans, strict=True):
            assert word_error_rate(sentence, utterance["text"]) <= 0.35, (participant, utterance["text"])
            # the lost chunks' time (~1 s of it before the first sentence) is kept as silence: the speech ends
            # where it ended for the sender
            assert abs(utterance["t1"] - (end + offset_s)) < 0.4, (participant, utterance["t1"], end)
        assert events.of_type("emotion", participant)
    assert not events.of_type("face")  # no video on a phone line


@pytest.mark.slow
async def test_real_recorded_speech_over_a_phone_line_is_transcribed(
    server: ServerProcess, tmp_path: Path
) -> None:
    samples, reference = librivox_reading()
    wav = Speech(samples, (), ()).write_wav(tmp_path / "reading.wav")
    async with EventLog(events_url(server, "call-reading")) as events:
        replies = await stream_call(media_url(server, "call-reading"), {"inbound": mulaw_chunks(wav)})
        await events.wait_for("participant.leave", timeout=40)

    assert not replies  # no error
    heard = " ".join(u["text"] for u in events.of_type("utterance", "caller"))
    # 8 kHz μ-law cuts what lies above 4 kHz ("s" sounds); Whisper tiny.en still gets most words
    assert word_error_rate(reference, heard) <= 0.3, heard
    assert events.of_type("emotion", "caller")


async def send_raw(url: str, messages: list[str]) -> tuple[list[dict[str, Any]], int | None]:
    """Send messages one by one; returns what the server answered and how it closed the socket."""
    replies: list[dict[str, Any]] = []
    async with connect(url) as ws:
        try:
            for message in messages:
                await ws.send(message)
                await asyncio.sleep(0.02)
            async with asyncio.timeout(10):
                async for text in ws:
                    replies.append(json.loads(text))
        except ConnectionClosed:
            pass
        return replies, ws.close_code


@pytest.mark.slow
async def test_a_malformed_message_closes_only_its_own_stream(server: ServerProcess, speech: Speech) -> None:
    good = asyncio.create_task(
        stream_call(media_url(server, "call-good"), {"inbound": encode_mulaw(pcm_8k(speech))})
    )
    twilio = TwilioMessages(["inbound"], {"participant": "mallory"})
    one_chunk = twilio.media("inbound", 0, b"\xff" * 160)
    async with (
        EventLog(events_url(server, "call-good")) as good_events,
        EventLog(events_url(server, "call-bad")) as bad_events,
    ):
        bad_base64 = json.loads(twilio.media("inbound", 1, b""))
        bad_base64["media"]["payload"] = "not base64!"
        cases = {
            "bad_payload": [twilio.connected(), twilio.start(), one_chunk, json.dumps(bad_base64)],
            "bad_json": [twilio.connected(), "{oops"],
            "unknown_event": [twilio.connected(), json.dumps({"event": "dance"})],
            "bad_media_format": [twilio.start().replace('"audio/x-mulaw"', '"audio/x-l16"')],
        }
        for code, messages in cases.items():
            replies, close_code = await send_raw(media_url(server, "call-bad"), messages)
            assert [(r["event"], r["error"]["code"]) for r in replies] == [("error", code)], replies
            assert close_code == 1008
        # 200 s of audio in one message: over phone.max_message_bytes, the socket is closed at once
        huge = twilio.media("inbound", 0, b"\xff" * 1_600_000)
        replies, close_code = await send_raw(media_url(server, "call-bad"), [twilio.start(), huge])
        assert replies == [] and close_code == 1009
        await bad_events.wait_for("participant.leave", "mallory")
        assert await good == []
        await good_events.wait_for("participant.leave", "caller", timeout=40)

    assert bad_events.of_type("participant.leave", "mallory")[0]["reason"] == "error"
    utterances = good_events.of_type("utterance", "caller")
    assert len(utterances) == len(speech.sentences), [u["text"] for u in utterances]
    for utterance, sentence in zip(utterances, speech.sentences, strict=True):
        assert word_error_rate(sentence, utterance["text"]) <= 0.35, utterance["text"]


PUBLISHER, READER = "phone-publisher-0001", "phone-reader-000001"


@pytest.fixture(scope="module")
def phone_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A node that takes tokens and at most three participants."""
    config = {
        **TEST_CONFIG,
        "auth": {
            "tokens": {PUBLISHER: ["publish"], READER: ["subscribe:*"], "phone-admin-000001": ["admin"]}
        },
        "server": {"max_participants": 3},
        "video": {"enabled": False},
    }
    process = ServerProcess(config, tmp_path_factory.mktemp("phone-node"))
    yield process
    process.stop()


async def hold_stream(
    url: str, tracks: list[str], parameters: dict[str, str], token: str | None = PUBLISHER
) -> tuple[ClientConnection, dict[str, Any] | None]:
    """A stream that has started and stays open (no media yet); the server's first answer, if any, in 2 s."""
    ws = await connect(url, additional_headers={"Authorization": f"Bearer {token}"} if token else None)
    twilio = TwilioMessages(tracks, parameters)
    await ws.send(twilio.connected())
    await ws.send(twilio.start())
    try:
        async with asyncio.timeout(2):
            return ws, json.loads(await ws.recv())
    except TimeoutError:
        return ws, None


@pytest.mark.slow
async def test_a_phone_stream_needs_a_publish_token_at_the_handshake_or_in_start(
    phone_node: ServerProcess,
) -> None:
    url = media_url(phone_node, "call-auth")
    with pytest.raises(InvalidStatus) as refused:
        await connect(url, additional_headers={"Authorization": f"Bearer {READER}"})
    assert refused.value.response.status_code == 403
    ws, answer = await hold_stream(url, ["inbound"], {}, token=None)
    assert answer is not None and answer["error"]["code"] == "unauthorized"
    with pytest.raises(ConnectionClosed):
        await ws.recv()
    assert ws.close_code == 1008
    async with EventLog(events_url(phone_node, "call-auth", token=READER)) as events:
        ws, answer = await hold_stream(
            url, ["inbound"], {"token": PUBLISHER, "participant": "ann"}, token=None
        )
        assert answer is None
        await events.wait_for("participant.join", "ann", timeout=10)
        await ws.close()
        await events.wait_for("participant.leave", "ann", timeout=10)


@pytest.mark.slow
async def test_a_taken_participant_id_and_a_full_node_refuse_the_stream(phone_node: ServerProcess) -> None:
    call = media_url(phone_node, "call-full")
    both, answer = await hold_stream(call, ["inbound", "outbound"], {})  # caller and callee: 2 places
    assert answer is None
    taken, answer = await hold_stream(call, ["inbound"], {})  # "caller" again
    assert answer is not None and answer["error"]["code"] == "participant_exists"
    too_many, answer = await hold_stream(media_url(phone_node, "call-other"), ["inbound", "outbound"], {})
    assert answer is not None and answer["error"]["code"] == "full"
    with pytest.raises(ConnectionClosed):
        await too_many.recv()
    assert too_many.close_code == 1013  # try again later
    third, answer = await hold_stream(call, ["inbound"], {"participant": "dan"})
    assert answer is None
    with pytest.raises(InvalidStatus) as refused:  # every place is taken: refused before the upgrade
        await connect(call, additional_headers={"Authorization": f"Bearer {PUBLISHER}"})
    assert refused.value.response.status_code == 503
    assert refused.value.response.headers["Retry-After"]
    for ws in (both, taken, third):
        await ws.close()
