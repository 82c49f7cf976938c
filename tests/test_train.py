"""Training encoder → Q-Formers → projector as a soft prompt of a frozen tiny Llama, on generated labelled clips."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub

from model.encoder import EncoderConfig  # noqa: E402
from model.llm import LLMReasoner, LLMSettings, ReasoningRequest  # noqa: E402
from model.qformer import IncrementalQFormerCache, QFormerConfig, load_checkpoint  # noqa: E402
from model.train import (  # noqa: E402
    ClipFeatures,
    TrainConfig,
    TrainResult,
    encoder_batch,
    prefix_embeddings,
    target_text,
    train,
)
from stream.cli import main  # noqa: E402
from stream.clip_features import extract_manifest  # noqa: E402
from tests.media import LABELLED_SCRIPTS, write_labelled_clips  # noqa: E402
from tests.tiny_llm import build_tiny_llama  # noqa: E402

FPS = 4  # clips are rendered and sampled at 4 frames a second: enough to train on, quick to decode
TINY = TrainConfig(
    lr=1e-2,
    steps=20,
    batch_size=len(LABELLED_SCRIPTS),  # every clip in every step: a smooth loss curve in few steps
    checkpoint_every=10,
    device="cpu",
    encoder=EncoderConfig(
        n_embd=32, n_head=2, n_layer=1, conv_channels=(8, 16), frame_size=64, crop_size=32, time_embed_dim=16
    ),
    qformer=QFormerConfig(
        n_embd=32,
        n_head=2,
        n_layer=2,
        num_queries=8,
        call_n_layer=1,
        call_num_queries=4,
        max_cached_utterances=2,
    ),
)
Dataset = tuple[list[ClipFeatures], list[str]]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    # These models are tiny; two threads on two cores that other work shares ran steps up to 30x slower
    # (threads waiting for each other), one thread runs them at the same speed every time.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_labelled_clips(tmp_path_factory.mktemp("clips"), fps=FPS)


@pytest.fixture(scope="module")
def dataset(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    clips, features = extract_manifest(
        manifest,
        tmp_path_factory.mktemp("features"),
        fps=FPS,
        frame_size=TINY.encoder.frame_size,
        crop_size=TINY.encoder.crop_size,
    )
    return features, [target_text(c) for c in clips]


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def trained(dataset: Dataset, tiny_llm: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return train(*dataset, tiny_llm, tmp_path_factory.mktemp("run"), TINY)


def test_clip_features_hold_the_sampled_frames_and_the_speakers_face(dataset: Dataset) -> None:
    features, targets = dataset
    for clip in features:
        T = len(clip.frame_times)
        assert clip.frames.shape == (T, 3, 64, 64) and clip.frames.dtype == torch.uint8
        assert clip.face_crops.shape == (T, 3, 32, 32)
        assert torch.allclose(clip.frame_times, torch.arange(T, dtype=torch.float64) / FPS)
        assert bool(clip.face_mask.all())  # the rendered face is in every frame
    assert targets[0].startswith("Emotion: happy, delighted. Valence 0.80, arousal 0.40. Says 'That is")


def test_loss_falls_while_training_on_labelled_clips(trained: TrainResult) -> None:
    losses = trained.losses
    assert len(losses) == TINY.steps and trained.first_step == 0
    # Measured: 7.53 at step 1, 6.87 at step 20 (first 3 average 7.46, last 3 6.89)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.4, losses
    out = trained.checkpoint.parent
    assert trained.checkpoint == out / "step-20.pt"
    assert {p.name for p in out.glob("*.pt")} == {"step-10.pt", "step-20.pt", "latest.pt"}
    # the gradient reaches the encoder through the frozen LLM, the Q-Formers and the projector
    middle, end = (torch.load(out / f"step-{n}.pt", weights_only=True)["encoder"] for n in (10, 20))
    assert not torch.equal(middle["frame_backbone.convs.0.weight"], end["frame_backbone.convs.0.weight"])


def test_a_resumed_run_continues_as_if_never_interrupted(
    dataset: Dataset, tiny_llm: Path, trained: TrainResult, tmp_path: Path
) -> None:
    first = train(*dataset, tiny_llm, tmp_path, replace(TINY, steps=3))
    resumed = train(*dataset, tiny_llm, tmp_path, replace(TINY, steps=6), resume=True)
    assert resumed.first_step == 3 and len(resumed.losses) == 6
    assert resumed.losses[:3] == first.losses
    # The first 6 steps of the uninterrupted 20-step run are a 6-step run: nothing in a step depends on
    # the total. Equal because batches, weights, optimizer state and RNG all come back from the checkpoint.
    assert resumed.losses == pytest.approx(trained.losses[:6], rel=1e-5)
    assert resumed.checkpoint == tmp_path / "step-6.pt" and (tmp_path / "latest.pt").is_file()


def test_resuming_with_other_settings_is_refused(
    dataset: Dataset, tiny_llm: Path, trained: TrainResult
) -> None:
    with pytest.raises(ValueError, match="lr"):
        train(*dataset, tiny_llm, trained.checkpoint.parent, replace(TINY, lr=1e-3), resume=True)


def test_trained_tokens_are_a_prefix_the_llm_reasoner_takes(
    dataset: Dataset, tiny_llm: Path, trained: TrainResult
) -> None:
    checkpoint = load_checkpoint(trained.checkpoint.parent / "latest.pt")
    encoder, qformer = checkpoint.encoder, checkpoint.qformer
    assert encoder is not None
    reasoner = LLMReasoner(LLMSettings(model_path=tiny_llm, device="cpu", explanation_tokens=0))
    assert qformer.cfg.llm_hidden_size == reasoner.hidden_size == 32

    batch = encoder_batch(dataset[0][:1], torch.device("cpu"))  # the "pleased" clip as one utterance
    with torch.inference_mode():
        encoded = encoder(**batch)
        tokens = IncrementalQFormerCache(qformer).add_utterance(encoded.tokens, encoded.mask)[0]
        assert torch.allclose(tokens, prefix_embeddings(encoder, qformer, batch)[0], atol=1e-5)
    assert tokens.shape == (8 + 4, 32)  # (Q + Qc, H)

    plain = ReasoningRequest(
        call="c1",
        utterance="u1",
        clues_text="face: smile 0.6-3.0 s (macro)",
        transcript="That is wonderful news, I love it.",
        candidates=("happy", "angry", "sad", "calm"),
        candidate_va=((0.8, 0.5), (-0.7, 0.8), (-0.7, -0.4), (0.3, -0.7)),
    )
    without, with_prefix = reasoner.rank([plain, replace(plain, prefix_embeds=tokens)])
    assert sum(with_prefix) == pytest.approx(1.0, abs=1e-5)
    assert max(abs(a - b) for a, b in zip(without, with_prefix, strict=True)) > 1e-3


@pytest.fixture
def keep_logging() -> Iterator[None]:
    """`main` configures the root logger for a command-line process; give pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def cli_train(manifest: Path, llm: Path, out: Path, *extra: str) -> int:
    argv = ["train", str(manifest), "--llm", str(llm), "--out", str(out), "--device", "cpu", "--fps", "2"]
    return main([*argv, "--batch-size", "2", *extra])


def test_cli_trains_prints_a_summary_and_refuses_to_overwrite_a_run(
    manifest: Path, tiny_llm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], keep_logging: None
) -> None:
    two_clips = manifest.with_name("two.jsonl")  # beside the clips, which manifest paths are relative to
    two_clips.write_text("".join(manifest.read_text().splitlines(keepends=True)[:2]))
    out = tmp_path / "run"

    assert cli_train(two_clips, tiny_llm, out, "--steps", "2") == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["resumed_at"] == 0
    assert summary["checkpoint"] == str(out / "step-2.pt") and (out / "latest.pt").is_file()
    assert summary["first_loss"] > 0 and summary["last_loss"] > 0

    assert cli_train(two_clips, tiny_llm, out, "--steps", "3") == 2
    assert "already holds a training run" in capsys.readouterr().err

    assert cli_train(two_clips, tiny_llm, out, "--steps", "3", "--resume") == 0
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (resumed["steps"], resumed["resumed_at"], resumed["first_loss"]) == (3, 2, summary["first_loss"])


@pytest.mark.parametrize("missing", ["manifest", "llm"])
def test_cli_names_a_missing_manifest_or_llm_folder(
    missing: str,
    manifest: Path,
    tiny_llm: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    keep_logging: None,
) -> None:
    absent = tmp_path / f"no-such-{missing}"
    paths = {"manifest": manifest, "llm": tiny_llm} | {missing: absent}
    assert cli_train(paths["manifest"], paths["llm"], tmp_path / "run", "--steps", "1") == 2
    err = capsys.readouterr().err
    assert str(absent) in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
