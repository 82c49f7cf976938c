"""Visual prefix of the LLM stage: live frames → ClipFeatures → a trained checkpoint's tokens → the LLM."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub

from model.emotion.vocabulary import EmotionVocabulary  # noqa: E402
from model.face.micro import MicroExpressionBuffer  # noqa: E402
from model.microemo.clip import ClipFeatures, encoder_batch  # noqa: E402
from model.microemo.encoder import GlobalLocalEncoder  # noqa: E402
from model.microemo.prefix import PrefixEncoder, ProjectorMismatchError  # noqa: E402
from model.microemo.qformer import VideoQFormer, save_checkpoint  # noqa: E402
from model.microemo.window_clip import features_from_window  # noqa: E402
from model.settings import LLMSettings  # noqa: E402
from model.training.fit_projector import TrainingUtterance, train  # noqa: E402
from stream.config import ConfigError, VideoSettings, load_settings  # noqa: E402
from stream.emotion.refiner import LLMRefiner  # noqa: E402
from stream.faces.analysis import VideoAnalysis  # noqa: E402
from stream.faces.sampling import WholeFrames  # noqa: E402
from tests.conftest import TEST_CONFIG  # noqa: E402
from tests.harness import (  # noqa: E402
    EventLog,
    ServerProcess,
    events_url,
    messages_per_utterance,
)
from tests.media import SPEECH_RATE, Speech  # noqa: E402
from tests.peer import PatternTrack, Peer, SpeechTrack  # noqa: E402
from tests.synth import SyntheticClip, render_clip  # noqa: E402
from tests.test_llm_stage import healthz  # noqa: E402
from tests.test_train import TINY as TRAINED  # noqa: E402
from tests.tiny_llm import build_tiny_llama  # noqa: E402

FPS = 15  # the rendered face, as the peer sends it and as video analysis samples it
TINY = replace(TRAINED, steps=2, batch_size=2, checkpoint_every=2)  # 2 steps: real weights, quickly
KEEP = WholeFrames(size=TINY.encoder.frame_size, fps=5.0)  # 64 pixels, at training's default rate
UTTERANCES = ((0.2, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 3.9))  # more than max_cached_utterances: some pool


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()  # tiny models: one thread is as fast, and steady on a shared CPU
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clip() -> SyntheticClip:
    return render_clip(duration_s=4.0, fps=FPS)  # brow raise 1.00-1.30 s (micro), smile 2.0-3.5 s (macro)


@pytest.fixture(scope="module")
def analysed(clip: SyntheticClip) -> Iterator[VideoAnalysis]:
    """The clip through the live video stage (MediaPipe), keeping whole frames for a 64-pixel encoder."""
    video = VideoAnalysis(VideoSettings(analysis_fps=FPS), "test", KEEP)
    last_t = (len(clip.frames) - 1) / FPS
    for k, image in enumerate(clip.frames):
        while video.backlog >= 4:  # as a file is fed: wait for the analysis instead of dropping frames
            time.sleep(0.005)
        video.offer(av.VideoFrame.from_ndarray(image, format="rgb24"), k / FPS)
    deadline = time.monotonic() + 30
    while video.analysed_until < last_t and time.monotonic() < deadline:
        time.sleep(0.01)
    yield video
    video.close()


def window_features(video: VideoAnalysis, t0: float, t1: float) -> ClipFeatures:
    window = video.window(t0, t1, np.array([]), np.array([]))
    features = features_from_window(window, TINY.encoder.frame_size, TINY.encoder.crop_size)  # 64, 32
    assert features is not None
    return features


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("llm") / "tiny-llama")


@pytest.fixture(scope="module")
def checkpoint(analysed: VideoAnalysis, tiny_llm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Trained for 2 steps on a call of two utterances of the live-analysed clip: real weights, a real format."""
    call = [
        TrainingUtterance(window_features(analysed, 0.2, 1.8), " surprised, because the brows rise."),
        TrainingUtterance(window_features(analysed, 1.8, 3.9), " happy, because she smiles."),
    ]
    result = train([call], tiny_llm, tmp_path_factory.mktemp("run"), TINY)
    assert result.checkpoint.name == "step-2.pt"
    return result.checkpoint


def test_a_face_window_becomes_clip_features_on_the_training_grid(analysed: VideoAnalysis) -> None:
    features = window_features(analysed, 1.0, 3.0)
    T = 11  # 5 frames a second of [1.0, 3.0], both ends included
    assert features.frames.shape == (T, 3, 64, 64) and features.frames.dtype == torch.uint8
    assert features.face_crops.shape == (T, 3, 32, 32) and features.face_crops.dtype == torch.uint8
    assert features.frame_times.dtype == torch.float64
    assert torch.allclose(features.frame_times, torch.arange(T, dtype=torch.float64) / 5, atol=1e-3)
    assert bool(features.face_mask.all())  # the rendered face is in every kept frame
    assert int(features.face_crops.float().std()) > 10  # real pixels, not the zeros of a missing face


def feed(video: VideoAnalysis, clip: SyntheticClip, every: int = 1, wait: bool = True) -> None:
    """Every `every`th frame of the clip, at its media time; waiting for the analysis, or as a live peer."""
    frames = list(enumerate(clip.frames))[::every]
    for k, image in frames:
        while wait and video.backlog >= 4:
            time.sleep(0.005)
        video.offer(av.VideoFrame.from_ndarray(image, format="rgb24"), k / FPS)
    deadline = time.monotonic() + 30
    while not video.idle and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # the worker's last frame, after the queue emptied


def test_whole_frames_keep_their_own_grid_whatever_analysis_rate_and_drops(clip: SyntheticClip) -> None:
    # Analysis at 2 fps and a queue of one frame fed without waiting: most analyses are dropped
    video = VideoAnalysis(VideoSettings(analysis_fps=2, queue_frames=1), "test", KEEP)
    try:
        feed(video, clip, wait=False)
        kept = video.window(1.0, 3.0, np.array([]), np.array([])).frames
    finally:
        video.close()
    assert [round(frame.t, 3) for frame in kept] == [round(1.0 + k / 5, 3) for k in range(11)]
    assert video.dropped > 0 and video.missed_whole_frames == 0


def test_a_source_slower_than_projector_fps_is_logged(
    clip: SyntheticClip, caplog: pytest.LogCaptureFixture
) -> None:
    video = VideoAnalysis(VideoSettings(analysis_fps=FPS), "slow-peer", KEEP)
    try:
        with caplog.at_level("WARNING", logger="stream.faces.analysis"):
            feed(video, clip, every=FPS // 2)  # about 2 frames a second; the encoder wants 5
    finally:
        video.close()
    assert video.missed_whole_frames > 0
    assert any("slow-peer" in r.message and "projector_fps = 5" in r.message for r in caplog.records)


def test_kept_frames_are_bounded_by_buffer_s_and_kept_only_when_asked() -> None:
    buffer = MicroExpressionBuffer(30.0)
    image = np.zeros((64, 64, 3), np.uint8)
    for k in range(200):  # 40 s at 5 fps
        buffer.mark_frame(k / 5)
        buffer.keep_frame(k / 5, image)
    kept = buffer.window(0.0, 40.0).frames
    assert [frame.t for frame in kept] == [k / 5 for k in range(200) if k / 5 >= 39.8 - 30.0]  # last 30 s
    assert len(kept) == 151
    assert all(frame.face is None for frame in kept)  # no face was pushed
    plain = MicroExpressionBuffer(30.0)
    plain.mark_frame(1.0)
    assert plain.window(0.0, 2.0).frames == []  # without keep_frame (the default) nothing is held


def test_incremental_prefix_tokens_equal_a_full_recompute(analysed: VideoAnalysis, checkpoint: Path) -> None:
    prefix = PrefixEncoder.from_checkpoint(checkpoint, "cpu", llm_hidden_size=32)
    cache = prefix.new_cache()
    history = []  # every utterance's Q-Former tokens, oldest first
    for t0, t1 in UTTERANCES:
        features = window_features(analysed, t0, t1)
        tokens = prefix.tokens(cache, features)
        assert tokens.shape == (8 + 4, 32)  # (Q + Qc, H)
        with torch.inference_mode():
            encoded = prefix.encoder(**encoder_batch([features], torch.device("cpu")))
            history.append(prefix.qformer.encode_utterance(encoded.tokens, encoded.mask))  # (1, Q, C)
            recomputed = prefix.qformer(torch.stack(history, dim=1))[0]  # whole history (1, N, Q, C)
        assert torch.allclose(tokens, recomputed, atol=1e-5)
    assert cache.num_utterances == len(UTTERANCES) and len(cache.recent) == 2 and cache.pooled is not None


def test_a_projector_for_another_hidden_size_is_refused_naming_both(checkpoint: Path) -> None:
    with pytest.raises(ProjectorMismatchError, match=r"hidden size 32 .*hidden size is 576"):
        PrefixEncoder.from_checkpoint(checkpoint, "cpu", llm_hidden_size=576)


def test_the_llm_stage_refuses_a_projector_trained_for_another_llm_naming_the_key(
    tiny_llm: Path, tmp_path: Path
) -> None:
    wide = tmp_path / "wide.pt"
    qformer = VideoQFormer(replace(TINY.qformer, encoder_dim=32, llm_hidden_size=576))  # SmolLM2's width
    save_checkpoint(wide, qformer, GlobalLocalEncoder(TINY.encoder))
    settings = LLMSettings(enabled=True, model_path=tiny_llm, device="cpu", projector_checkpoint=wide)
    with pytest.raises(ConfigError, match=r"emotion\.llm\.projector_checkpoint: .*576.*32"):
        LLMRefiner(settings, EmotionVocabulary.load())


def test_a_missing_projector_checkpoint_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"emotion:\n  llm:\n    projector_checkpoint: {tmp_path / 'nope.pt'}\n")
    with pytest.raises(ConfigError, match=r"emotion\.llm\.projector_checkpoint: .*nope\.pt"):
        load_settings(config)


@pytest.mark.slow
async def test_each_utterance_of_a_face_call_is_answered_by_the_llm_reading_the_video(
    tiny_llm: Path, checkpoint: Path, clip: SyntheticClip, speech: Speech, tmp_path: Path, event_validator
) -> None:
    llm = {
        "enabled": True,
        "model_path": str(tiny_llm),
        "mode": "rank",
        "device": "cpu",
        "projector_checkpoint": str(checkpoint),
    }
    server = ServerProcess({**TEST_CONFIG, "emotion": {"llm": llm}}, tmp_path, ready_timeout_s=120)
    try:
        async with EventLog(events_url(server, "call-prefix")) as events:
            peer = Peer(server.url, "call-prefix", "uma")
            audio = SpeechTrack(speech.samples, SPEECH_RATE)
            await peer.join(audio, PatternTrack(list(clip.frames), fps=FPS))
            while audio.sent_s < speech.duration:
                await asyncio.sleep(0.05)
            await peer.leave()
            await events.wait_for("participant.leave", timeout=60)  # the leave waits for the LLM answers
        deadline = time.monotonic() + 10
        while healthz(server)["participants"] and time.monotonic() < deadline:  # the session is forgotten
            await asyncio.sleep(0.1)
        health = healthz(server)["stages"]["emotion"]["llm"]
    finally:
        server.stop()

    for mine in messages_per_utterance(events, event_validator, expected=2):
        assert [m["type"] for m in mine] == ["utterance", "face", "emotion", "emotion"]
        face, fast, final = mine[1:]
        assert face["present"] > 0.8
        assert fast["final"] is False and final["final"] is True
        assert final["model"] == "llm:tiny-llama+projector:step-2.pt"  # the answer read the video too
        assert len(final["labels"]) == 5  # emotion.top_k
        assert all(0 < label["score"] <= 1 for label in final["labels"])
    assert health["projector"] == "step-2.pt"
    assert health["prefixed"] == 2 and health["failures"] == 0
    assert health["calls_with_video_context"] == 0  # the call's cache went with its last participant
