"""Live: a server that finds its event loop late sheds face frames (counted in /metrics), and speech still gets
every event, in order, with the face still read."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import TEST_CONFIG
from tests.harness import EventLog, ServerProcess, events_url, messages_per_utterance
from tests.media import SPEECH_RATE, Speech
from tests.peer import EncodedVideoTrack, Peer, SpeechTrack, encode_vp8
from tests.synth import render_clip

pytestmark = pytest.mark.slow
FPS = 15


@pytest.fixture(scope="module")
def lagging(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Every tick of its event loop counts as late (a lag of 1 µs sheds): it sheds all the call long."""
    config = {**TEST_CONFIG, "server": {"shed_lag_ms": 0.001}}
    process = ServerProcess(config, Path(tmp_path_factory.mktemp("lagging")))
    yield process
    process.stop()


def metric(server: ServerProcess, sample: str) -> float:
    with urllib.request.urlopen(f"{server.url}/metrics") as response:
        text = response.read().decode()
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_a_lagging_loop_sheds_face_frames_and_speech_events_all_arrive_in_order(
    lagging: ServerProcess, speech: Speech, event_validator: jsonschema.Draft202012Validator
) -> None:
    frames = encode_vp8(list(render_clip(duration_s=4.0, fps=FPS).frames), FPS)
    shed_before = metric(lagging, 'microemo_shed_total{work="face_frames"}')
    analysed_before = metric(lagging, 'microemo_stage_seconds_count{stage="faces"}')
    async with EventLog(events_url(lagging, "call-shed")) as events:
        peer = Peer(lagging.url, "call-shed", "kim")
        audio = SpeechTrack(speech.samples, SPEECH_RATE)
        await peer.join(audio, EncodedVideoTrack(frames, fps=FPS))
        while audio.sent_s < speech.duration:
            await asyncio.sleep(0.05)
        await events.wait_for("emotion", count=len(speech.spans), timeout=60)
        await peer.leave()
        await events.wait_for("participant.leave", timeout=30)

    shed = metric(lagging, 'microemo_shed_total{work="face_frames"}') - shed_before
    analysed = metric(lagging, 'microemo_stage_seconds_count{stage="faces"}') - analysed_before
    assert shed > 0 and analysed > 0
    assert shed > analysed  # most sampled frames went; the rest were still analysed
    assert metric(lagging, "microemo_loop_lag_seconds_count") > 0

    # speech first: each utterance's speech.start, speech.end, transcript, face and emotion, in that order
    types = [m["type"] for m in events.messages if m["type"].startswith("speech.")]
    assert types == ["speech.start", "speech.end"] * len(speech.spans)
    for about in messages_per_utterance(events, event_validator, expected=len(speech.spans)):
        assert [m["type"] for m in about] == ["utterance", "face", "emotion"]
        assert about[1]["present"] > 0  # the face is still seen, from fewer frames
    assert not events.interim("utterance")  # interim transcripts go while frames are shed
