"""The pipecat processor in a real pipecat pipeline fed real speech, against a real MicroEmo server: every frame
of the pipeline passes through unchanged and in order, and the server's reading comes back as frames."""

from __future__ import annotations

from pathlib import Path

import pytest
from pipecat.frames.frames import EndFrame, ErrorFrame, InputAudioRawFrame, InputImageRawFrame, TextFrame
from pipecat.pipeline.capabilities import BotCapabilities
from pipecat.processors.aggregators.llm_context import LLMContext

from clients.pipecat import (
    MicroEmoContextNote,
    MicroEmoEmotionFrame,
    MicroEmoFrame,
    MicroEmoProcessor,
    MicroEmoUtteranceFrame,
)
from tests.conftest import SENTENCES, TEST_CONFIG
from tests.harness import ServerProcess, free_port
from tests.media import Speech, compose, librivox_reading, word_error_rate
from tests.pipecat_rig import Collector, SpeechSource, run_pipeline
from tests.synth import rest_frame


def final_emotions(sink: Collector) -> list[MicroEmoEmotionFrame]:
    return [f for f in sink.of_type(MicroEmoEmotionFrame) if f.final]  # type: ignore[misc]


def assert_passed_through(source: SpeechSource, sink: Collector) -> None:
    """Every frame the source made reached the sink, the same object with the same bytes, in order (audio among
    audio, markers among markers: pipecat hands system frames such as audio on ahead of data frames)."""
    for kind in (InputAudioRawFrame, InputImageRawFrame, TextFrame):
        made = [id(f) for f in source.pushed if isinstance(f, kind)]
        arrived = [id(f) for f in sink.frames if id(f) in set(made)]
        assert made or kind is InputImageRawFrame
        assert arrived == made


@pytest.mark.slow
async def test_pipeline_frames_pass_and_the_reading_comes_back_in_order(
    server: ServerProcess, speech: Speech
) -> None:
    source, sink = SpeechSource(speech.samples), Collector()
    processor = MicroEmoProcessor(server.url, call="pipecat-speech", host_addresses=["127.0.0.1"])
    sizes: list[int] = []

    async def until_both_read() -> None:
        await sink.wait_until(
            lambda s: len(final_emotions(s)) >= len(SENTENCES), timeout=speech.duration + 60
        )
        sizes.extend(len(f.audio) for f in source.pushed if isinstance(f, InputAudioRawFrame))

    await run_pipeline([source, processor, sink], until_both_read)

    assert_passed_through(source, sink)
    assert isinstance(sink.frames[-1], EndFrame)
    assert set(sizes) == {640}  # 20 ms of 16 kHz s16 mono each, as made
    ours: list[MicroEmoFrame] = sink.of_type(MicroEmoFrame)  # type: ignore[assignment]
    seqs = [f.seq for f in ours]
    assert seqs == sorted(set(seqs)), seqs
    assert {(f.call, f.participant) for f in ours} == {("pipecat-speech", "user")}
    utterances = [f for f in ours if isinstance(f, MicroEmoUtteranceFrame) and f.final]
    assert len(utterances) == len(SENTENCES), [u.text for u in utterances]
    for utterance, sentence in zip(utterances, SENTENCES, strict=True):
        assert word_error_rate(sentence, utterance.text) <= 0.4, (sentence, utterance.text)
        emotions = [f for f in final_emotions(sink) if f.utterance == utterance.utterance]
        assert emotions and all(e.model and e.labels for e in emotions), emotions
        assert ours.index(emotions[0]) > ours.index(utterance)  # read after it was heard
    for interim in (f for f in ours if isinstance(f, MicroEmoUtteranceFrame) and not f.final):
        closing = next(u for u in utterances if u.utterance == interim.utterance)
        assert interim.seq < closing.seq  # an update of an utterance still spoken comes before its close


@pytest.mark.slow
async def test_real_recorded_speech_comes_back_as_its_words_and_a_reading(server: ServerProcess) -> None:
    samples, reference = librivox_reading()
    source, sink = SpeechSource(samples), Collector()
    processor = MicroEmoProcessor(server.url, call="pipecat-reading", host_addresses=["127.0.0.1"])

    async def until_read() -> None:
        await sink.wait_until(lambda s: len(final_emotions(s)) >= 2, timeout=60)

    await run_pipeline([source, processor, sink], until_read)

    assert_passed_through(source, sink)
    heard = [f for f in sink.of_type(MicroEmoUtteranceFrame) if f.final]  # type: ignore[misc]
    text = " ".join(u.text for u in heard)
    assert word_error_rate(reference, text) <= 0.3, text
    assert all(e.model and e.labels for e in final_emotions(sink))


@pytest.mark.slow
async def test_camera_frames_reach_the_server_when_the_pipeline_receives_video(server: ServerProcess) -> None:
    speech = compose(["That is wonderful news, I love it."], lead_s=0.6, tail_s=1.0)
    source, sink = SpeechSource(speech.samples, image=rest_frame()), Collector()
    processor = MicroEmoProcessor(server.url, call="pipecat-camera", host_addresses=["127.0.0.1"])

    async def until_read() -> None:
        await sink.wait_until(lambda s: bool(final_emotions(s)), timeout=speech.duration + 60)

    # video=None: the processor sends video because the worker says the bot receives the user's video
    await run_pipeline([source, processor, sink], until_read, capabilities=BotCapabilities(video_in=True))

    assert_passed_through(source, sink)
    emotion = final_emotions(sink)[0]
    assert emotion.event["clues"]["visual"] is not None, emotion.event["clues"]  # a face was seen
    assert emotion.event["clues"]["audio"] is not None


@pytest.mark.slow
async def test_each_user_of_the_transport_is_a_participant_of_the_pipelines_call(
    server: ServerProcess,
) -> None:
    said = {
        "ann": "That is wonderful news, I love it.",
        "bob": "Please send me the report before the meeting.",
    }
    ann = SpeechSource(compose([said["ann"]], lead_s=0.5, tail_s=0.5).samples, user_id="ann")
    bob = SpeechSource(compose([said["bob"]], lead_s=3.5, tail_s=0.5).samples, user_id="bob")
    sink = Collector()
    processor = MicroEmoProcessor(server.url, call="pipecat-two", host_addresses=["127.0.0.1"])

    async def until_both_read() -> None:
        await sink.wait_until(lambda s: len(final_emotions(s)) >= 2, timeout=60)

    await run_pipeline([ann, bob, processor, sink], until_both_read)

    for source in (ann, bob):
        assert_passed_through(source, sink)
    utterances = [f for f in sink.of_type(MicroEmoUtteranceFrame) if f.final]  # type: ignore[attr-defined]
    assert sorted(u.participant for u in utterances) == ["ann", "bob"], [
        (u.participant, u.text) for u in utterances
    ]
    for utterance in utterances:
        assert word_error_rate(said[utterance.participant], utterance.text) <= 0.4, utterance.text
    assert {e.participant for e in final_emotions(sink)} == {"ann", "bob"}
    assert {f.call for f in sink.of_type(MicroEmoFrame)} == {"pipecat-two"}  # type: ignore[attr-defined]


@pytest.mark.slow
async def test_with_auth_on_a_token_opens_media_and_events_and_a_wrong_one_is_reported(
    tmp_path: Path,
) -> None:
    token = "pipecat-bot-token-0001"
    config = {**TEST_CONFIG, "auth": {"tokens": {token: ["publish", "subscribe:pipecat-auth"]}}}
    server = ServerProcess(config, tmp_path)
    try:
        speech = compose(["That is wonderful news, I love it."], lead_s=0.5, tail_s=0.8)
        refused, refused_sink = SpeechSource(speech.samples), Collector()
        wrong = MicroEmoProcessor(
            server.url, call="pipecat-auth", token="not-a-token", host_addresses=["127.0.0.1"]
        )

        async def until_refused() -> None:
            await refused_sink.wait_until(lambda s: len(s.of_type(InputAudioRawFrame)) >= 50, timeout=20)

        await run_pipeline([refused, wrong, refused_sink], until_refused)
        source, sink = SpeechSource(speech.samples), Collector()
        right = MicroEmoProcessor(server.url, call="pipecat-auth", token=token, host_addresses=["127.0.0.1"])

        async def until_read() -> None:
            await sink.wait_until(lambda s: bool(final_emotions(s)), timeout=60)

        await run_pipeline([source, right, sink], until_read)
    finally:
        server.stop()

    assert_passed_through(refused, refused_sink)
    errors = [f.error for f in refused.upstream if isinstance(f, ErrorFrame)]
    assert len(errors) == 2 and all("401" in e for e in errors), errors  # media and events, each said once
    assert not refused_sink.of_type(MicroEmoFrame)
    assert not [f for f in source.upstream if isinstance(f, ErrorFrame)]
    assert final_emotions(sink)[0].model


@pytest.mark.slow
async def test_a_server_that_dies_mid_call_leaves_the_pipeline_running(
    tmp_path: Path, speech: Speech
) -> None:
    server = ServerProcess(TEST_CONFIG, tmp_path)
    source, sink = SpeechSource(speech.samples), Collector()
    processor = MicroEmoProcessor(server.url, call="pipecat-dies", host_addresses=["127.0.0.1"])
    audio_at_death: list[int] = []

    async def until_it_died_and_time_went_on() -> None:
        try:
            await sink.wait_until(lambda s: bool(final_emotions(s)), timeout=60)
        finally:
            server.process.kill()  # no goodbye: the websocket and the WebRTC peer just stop answering
            server.stop()
        audio_at_death.append(len(sink.of_type(InputAudioRawFrame)))
        await sink.wait_until(
            lambda s: len(s.of_type(InputAudioRawFrame)) >= audio_at_death[0] + 150, timeout=20
        )

    await run_pipeline([source, processor, sink], until_it_died_and_time_went_on)

    assert_passed_through(source, sink)  # 3 s of audio went on through it after the server died
    assert isinstance(sink.frames[-1], EndFrame)
    errors = [f.error for f in source.upstream if isinstance(f, ErrorFrame)]
    assert any("events of call pipecat-dies" in e for e in errors), errors


async def test_an_unreachable_server_leaves_the_pipeline_running(tmp_path: Path) -> None:
    speech = compose(["Hello there."], lead_s=0.2, tail_s=0.3)
    source, sink = SpeechSource(speech.samples), Collector()
    address = f"http://127.0.0.1:{free_port()}"
    processor = MicroEmoProcessor(address, host_addresses=["127.0.0.1"], max_audio_chunks=25)

    async def until_a_few_seconds_passed() -> None:
        await sink.wait_until(lambda s: len(s.of_type(InputAudioRawFrame)) >= 100, timeout=20)

    await run_pipeline([source, processor, sink], until_a_few_seconds_passed)

    assert_passed_through(source, sink)
    assert isinstance(sink.frames[-1], EndFrame)  # ended as asked, not cancelled
    errors = [f for f in source.upstream if isinstance(f, ErrorFrame)]
    assert errors and all("MicroEmo" in e.error and not e.fatal for e in errors), errors
    assert len(errors) <= 2  # one per outage (media, events), not one per retry
    assert processor.dropped["user"] >= 75  # 100 chunks, room for 25: the oldest audio went, counted


def test_the_context_note_is_one_system_message_with_the_latest_emotion() -> None:
    context = LLMContext(messages=[{"role": "system", "content": "You are a kind nurse."}])
    note = MicroEmoContextNote(context)

    def emotion(label: str, score: float, valence: float) -> MicroEmoEmotionFrame:
        clues = {"audio": {"f0_median_hz": 180.0}, "text": {"transcript": "..."}, "visual": None}
        event = {"call": "c", "participant": "user", "seq": 1, "final": True, "clues": clues}
        return MicroEmoEmotionFrame(
            call="c", participant="user", seq=1, t0=0.0, t1=1.0, final=True, event=event, utterance="u1",
            labels=[(label, score), ("calm", 0.05)], valence=valence, arousal=0.4, explanation="", model="heads/2",
        )  # fmt: skip

    note.write(emotion("frustrated", 0.71, -0.5))
    context.add_message({"role": "user", "content": "Why is this taking so long?"})
    note.write(emotion("relieved", 0.64, 0.6))

    messages = context.messages
    assert messages[0]["content"] == "You are a kind nurse."
    assert messages[1]["role"] == "user"
    notes = [m for m in messages if "sounds" in str(m.get("content"))]
    assert notes == [messages[-1]] and messages[-1]["role"] == "system"
    assert "relieved (0.64)" in messages[-1]["content"] and "calm" not in messages[-1]["content"]
    assert "+0.60" in messages[-1]["content"] and "heads/2" in messages[-1]["content"]
    assert "voice and words" in messages[-1]["content"] and "face" not in messages[-1]["content"]
