"""Live LLM stage: fast estimate first (final: false), then the LLM's refinement (final: true); failures fall back."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.config import ConfigError, load_settings
from tests.conftest import TEST_CONFIG
from tests.harness import (
    EventLog,
    ServerProcess,
    events_url,
    messages_per_utterance,
)
from tests.media import SPEECH_RATE, Speech
from tests.peer import Peer, SpeechTrack
from tests.tiny_llm import build_tiny_llama

pytestmark = pytest.mark.slow


def llm_server(workdir: Path, llm: dict[str, Any]) -> ServerProcess:
    config = {**TEST_CONFIG, "video": {"enabled": False}, "emotion": {"llm": {"enabled": True, **llm}}}
    return ServerProcess(config, workdir, ready_timeout_s=240)  # SmolLM2 dequantises on load (~40 s here)


@pytest.fixture(scope="module")
def smollm2_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = llm_server(tmp_path_factory.mktemp("smollm2"), {"device": "cpu"})
    yield process
    process.stop()


def healthz(server: ServerProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.url}/healthz", timeout=5) as response:
        return json.loads(response.read())


async def stream_call(server: ServerProcess, call: str, speech: Speech, timeout_s: float = 120) -> EventLog:
    async with EventLog(events_url(server, call)) as events:
        peer = Peer(server.url, call, "kim")
        audio = SpeechTrack(speech.samples, SPEECH_RATE)
        await peer.join(audio, None)
        while audio.sent_s < speech.duration:
            await asyncio.sleep(0.05)
        await peer.leave()
        await events.wait_for("participant.leave", timeout=timeout_s)  # the leave waits for LLM answers
    return events


async def test_each_utterance_gets_the_fast_estimate_then_the_smollm2_refinement(
    smollm2_server: ServerProcess, speech: Speech, event_validator
) -> None:
    events = await stream_call(smollm2_server, "call-llm", speech)
    for mine in messages_per_utterance(events, event_validator, expected=2):
        emotions = [m for m in mine if m["type"] == "emotion"]
        assert [m["type"] for m in mine] == ["utterance", "emotion", "emotion"]
        fast, refined = emotions
        assert fast["final"] is False and fast["model"] == "heads/2"  # the default estimator
        assert refined["final"] is True and refined["model"] == "llm:SmolLM2-135M-Instruct.Q4_1"
        assert refined["clues"] == fast["clues"]  # the same evidence, read by another model
        assert len(refined["labels"]) == 5  # emotion.top_k (its default)
        assert all(0 < label["score"] <= 1 for label in refined["labels"])
        assert refined["explanation"].startswith(f"The speaker feels {refined['labels'][0]['label']}")
        assert -1 <= refined["valence"] <= 1 and -1 <= refined["arousal"] <= 1
    # "That is wonderful news, I love it." stays pleasant after the LLM's reading
    # (the first final estimate: the second utterance's fast one may come before it)
    assert [m for m in events.of_type("emotion") if m["final"]][0]["valence"] > 0

    health = healthz(smollm2_server)["stages"]["emotion"]
    assert health["active"] == "llm:SmolLM2-135M-Instruct.Q4_1"
    assert (
        health["llm"]["state"] == "ready"
        and health["llm"]["requests"] >= 2
        and health["llm"]["failures"] == 0
    )


async def test_unparsable_llm_answers_fall_back_to_the_fast_estimate_with_an_error(
    tmp_path: Path, speech: Speech, event_validator
) -> None:
    # A randomly initialised model asked for free JSON writes noise: every answer fails strict parsing.
    folder = build_tiny_llama(tmp_path / "tiny-llama")
    server = llm_server(tmp_path, {"model_path": str(folder), "mode": "generate", "device": "cpu"})
    try:
        events = await stream_call(server, "call-llm-bad", speech)
        health = healthz(server)
    finally:
        server.stop()
    for mine in messages_per_utterance(events, event_validator, expected=2):
        assert [m["type"] for m in mine] == ["utterance", "emotion", "error", "emotion"]
        fast, error, final = mine[1:]
        assert error["code"] == "llm_failed" and "unparsable" in error["message"]
        assert final["final"] is True and final["model"] == fast["model"]  # the fast estimate stands
        assert final["labels"] == fast["labels"] and final["valence"] == fast["valence"]
    assert health["stages"]["emotion"]["llm"]["failures"] == 2
    assert health["status"] == "ok"  # one bad answer degrades no stage: the server serves on


def test_a_missing_llm_folder_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"emotion:\n  llm:\n    enabled: true\n    model_path: {tmp_path / 'nope'}\n")
    with pytest.raises(ConfigError, match=r"emotion\.llm"):
        load_settings(config)
