"""The LLM stage on a shared inference server: a real llama.cpp OpenAI-compatible server, a slow one, a dead one."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from model.llm import ReasoningRequest, RemoteLLMError, RemoteReasoner
from model.settings import LLMSettings
from stream.config import ConfigError, load_settings
from tests.conftest import TEST_CONFIG
from tests.harness import ServerProcess, free_port, messages_per_utterance
from tests.media import Speech
from tests.servers import LlamaServer
from tests.test_llm_stage import healthz, stream_call

pytestmark = pytest.mark.slow


def remote(**settings: object) -> LLMSettings:
    """emotion.llm for a shared OpenAI-compatible server, as config.yaml would give it."""
    return LLMSettings.model_validate({"enabled": True, "backend": "openai", "mode": "generate", **settings})


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaServer]:
    server = LlamaServer(tmp_path_factory.mktemp("llama"))
    yield server
    server.stop()


def remote_config(url: str, **llm: Any) -> dict[str, Any]:
    settings = {
        "enabled": True,
        "backend": "openai",
        "url": url,
        "mode": "generate",
        "response_format": "json_object",  # llama-cpp-python's form of structured output
        **llm,
    }
    return {**TEST_CONFIG, "video": {"enabled": False}, "emotion": {"llm": settings}}


def request(uid: str, transcript: str) -> ReasoningRequest:
    candidates = ("happy", "delighted", "calm", "annoyed", "sad")
    return ReasoningRequest(
        call="call-remote",
        utterance=uid,
        clues_text="voice: rising pitch, loud; face: smile 1.0-2.0 s (macro)",
        transcript=transcript,
        candidates=candidates,
        candidate_va=((0.8, 0.5), (0.9, 0.6), (0.3, -0.6), (-0.5, 0.4), (-0.7, -0.4)),
    )


async def test_concurrent_requests_get_strict_json_answers_from_the_real_llama_server(
    llama: LlamaServer,
) -> None:
    reasoner = RemoteReasoner(remote(url=llama.url, response_format="json_object"))
    try:
        results = await asyncio.gather(
            *(reasoner.reason(request(f"u{i}", f"Sentence number {i}, I love it.")) for i in range(3))
        )
    finally:
        await reasoner.close_loop()
    assert reasoner.name == LlamaServer.MODEL  # asked at GET /v1/models
    for result in results:
        assert result.model == LlamaServer.MODEL
        assert 1 <= len(result.labels) <= 3 and all(label for label, _ in result.labels)
        assert -1 <= result.valence <= 1 and -1 <= result.arousal <= 1
    assert reasoner.stats.failures == 0 and reasoner.stats.retries == 0


async def test_a_dead_server_fails_after_its_retries(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    settings = remote(url=closed, served_model="any", retries=2, retry_backoff_s=0.05, timeout_s=2)
    reasoner = RemoteReasoner(settings)
    try:
        with pytest.raises(RemoteLLMError, match="gave no answer"):
            await reasoner.reason(request("u1", "Hello there."))
    finally:
        await reasoner.close_loop()
    assert reasoner.stats.attempts == 3 and reasoner.stats.retries == 2 and reasoner.stats.failures == 1


async def test_a_live_call_is_refined_by_the_shared_llama_server(
    llama: LlamaServer, tmp_path: Path, speech: Speech, event_validator
) -> None:
    server = ServerProcess(remote_config(llama.url), tmp_path)
    try:
        assert healthz(server)["stages"]["emotion"]["active"] == f"llm:{LlamaServer.MODEL}"
        events = await stream_call(server, "call-remote", speech)
        health = healthz(server)["stages"]["emotion"]["llm"]
    finally:
        server.stop()
    for mine in messages_per_utterance(events, event_validator, expected=2):
        assert [m["type"] for m in mine] == ["utterance", "emotion", "emotion"]
        fast, refined = mine[1:]
        assert fast["final"] is False and refined["final"] is True
        assert refined["model"] == f"llm:{LlamaServer.MODEL}"
        assert refined["clues"] == fast["clues"]
        assert -1 <= refined["valence"] <= 1 and 1 <= len(refined["labels"]) <= 3
    assert health["backend"] == "openai" and health["url"] == llama.url
    assert health["requests"] == 2 and health["attempts"] >= 2 and health["failures"] == 0


async def test_a_stalled_server_gives_llm_failed_and_the_fast_estimate_stays_final(
    llama: LlamaServer, tmp_path: Path, speech: Speech, event_validator
) -> None:
    config = remote_config(llama.url, timeout_s=1.0, retries=1, retry_backoff_s=0.1)
    server = ServerProcess(config, tmp_path)
    llama.pause()  # accepts connections, answers nothing: a server stuck under load
    try:
        events = await stream_call(server, "call-stalled", speech, timeout_s=30)
        health = healthz(server)
    finally:
        llama.resume()
        server.stop()
    for mine in messages_per_utterance(events, event_validator, expected=2):
        assert [m["type"] for m in mine] == ["utterance", "emotion", "error", "emotion"]
        fast, error, final = mine[1:]
        assert error["code"] == "llm_failed" and "gave no answer" in error["message"]
        assert final["final"] is True and final["model"] == fast["model"]  # the fast estimate stands
        assert final["labels"] == fast["labels"]
    assert health["stages"]["emotion"]["llm"]["failures"] == 2
    assert health["status"] == "ok"  # the call went on; the node serves on


def test_the_openai_backend_needs_a_url_and_json_mode(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("emotion:\n  llm:\n    enabled: true\n    backend: openai\n    mode: generate\n")
    with pytest.raises(ConfigError, match=r"emotion\.llm: .*needs url"):
        load_settings(config)
    config.write_text("emotion:\n  llm:\n    backend: openai\n    url: http://127.0.0.1:1/v1\n")
    with pytest.raises(ConfigError, match=r"emotion\.llm: .*mode: generate"):
        load_settings(config)
    config.write_text("emotion:\n  llm:\n    backend: openai\n    url: http://h/v1\n    retries: -1\n")
    with pytest.raises(ConfigError, match=r"emotion\.llm\.retries"):
        load_settings(config)
