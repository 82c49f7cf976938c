"""Training encoder → Q-Formers → projector as a soft prompt of a frozen tiny Llama, on generated labelled clips."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach a model hub

from model.face.landmarks import choose_speaker  # noqa: E402
from model.llm import (  # noqa: E402
    JSON_ANSWER_PREFIX,
    LLMReasoner,
    ReasoningRequest,
    parse_generated_answer,
    prompt_ids,
)
from model.microemo.clip import ClipFeatures  # noqa: E402
from model.microemo.encoder import EncoderConfig, GlobalLocalEncoder  # noqa: E402
from model.microemo.prefix import PrefixEncoder  # noqa: E402
from model.microemo.qformer import QFormerConfig, VideoQFormer  # noqa: E402
from model.settings import LLMSettings
from model.training.clip_features import extract_manifest  # noqa: E402
from model.training.evaluation import LabelledClip  # noqa: E402
from model.training.fit_projector import (  # noqa: E402
    TrainConfig,
    TrainingUtterance,
    TrainResult,
    call_prefixes,
    lm_inputs,
    optimizer_for,
    target_text,
    train,
)
from model.training.train_projector import training_calls  # noqa: E402
from stream.cli import main  # noqa: E402
from tests.media import LABELLED_SCRIPTS, write_labelled_clips  # noqa: E402
from tests.tiny_llm import build_tiny_llama  # noqa: E402

FPS = 4  # clips are rendered and sampled at 4 frames a second: enough to train on, quick to decode
TINY = TrainConfig(
    lr=1e-2,
    steps=20,
    batch_size=len(
        LABELLED_SCRIPTS
    ),  # every clip (a call each) in every step: a smooth loss curve in few steps
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
Dataset = tuple[list[LabelledClip], list[ClipFeatures]]


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
    return extract_manifest(
        manifest,
        tmp_path_factory.mktemp("features"),
        fps=FPS,
        frame_size=TINY.encoder.frame_size,
        crop_size=TINY.encoder.crop_size,
    )


@pytest.fixture(scope="module")
def calls(dataset: Dataset) -> list[list[TrainingUtterance]]:
    return training_calls(*dataset, TINY)  # no `call` key in the manifest: one call per clip


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def trained(
    calls: list[list[TrainingUtterance]], tiny_llm: Path, tmp_path_factory: pytest.TempPathFactory
) -> TrainResult:
    return train(calls, tiny_llm, tmp_path_factory.mktemp("run"), TINY)


def a_call(dataset: Dataset, utterances: int) -> list[TrainingUtterance]:
    """One call of the clips' features in turn, more utterances than the cache keeps as they are."""
    features = dataset[1]
    return [TrainingUtterance(features[k % len(features)], " happy.") for k in range(utterances)]


def test_clip_features_hold_the_sampled_frames_and_the_speakers_face(
    dataset: Dataset, calls: list[list[TrainingUtterance]]
) -> None:
    clips, features = dataset
    for clip in features:
        T = len(clip.frame_times)
        assert clip.frames.shape == (T, 3, 64, 64) and clip.frames.dtype == torch.uint8
        assert clip.face_crops.shape == (T, 3, 32, 32)
        assert torch.allclose(clip.frame_times, torch.arange(T, dtype=torch.float64) / FPS)
        assert bool(clip.face_mask.all())  # the rendered face is in every frame
    assert [len(call) for call in calls] == [1] * len(clips)
    # What serving's rank mode reads after "The speaker feels": the label, then the explanation
    assert calls[0][0].target.startswith(" happy, because says 'That is")


def test_one_rule_chooses_the_speaking_face_of_a_clip_and_of_a_live_utterance() -> None:
    t = np.arange(0, 4, 0.2)  # 5 frames a second, as clips are sampled
    talker = 0.3 + 0.2 * np.sin(2 * np.pi * 1.5 * t)  # the mouth opens and closes
    listener = 0.1 + 0.01 * np.cos(t)  # a closed mouth, barely moving
    glimpse = 0.3 + 0.3 * np.sin(7 * t[:4])  # a face seen for a moment, however much it moves
    mouths = {1: (t, listener), 2: (t, talker), 3: (t[:4], glimpse)}
    assert choose_speaker(mouths) == 2  # a training clip: no speech activity, the mouth that moves most
    assert choose_speaker({}) is None
    # live: the mouth that moves with the speech activity is the speaker, even when another moves more
    live_t, speech_t = np.arange(0, 4, 1 / 15), np.arange(0, 4, 0.05)  # analysis at 15 fps, VAD chunks
    speaking = (speech_t > 2.0).astype(float)
    late = np.where(live_t > 2.0, 0.3 + 0.1 * np.sin(2 * np.pi * 3 * live_t), 0.1)  # speaks from 2 s on
    steady = 0.3 + 0.2 * np.sin(2 * np.pi * 1.5 * live_t)  # moves more, but all along (e.g. chewing)
    assert choose_speaker({1: (live_t, late), 2: (live_t, steady)}, speech_t, speaking) == 1


def test_loss_falls_while_training_on_labelled_clips(trained: TrainResult) -> None:
    losses = trained.losses
    assert len(losses) == TINY.steps and trained.first_step == 0
    # Measured: 7.49 at step 1, 6.66 at step 20 (first 3 average 7.50, last 3 6.66)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.4, losses
    out = trained.checkpoint.parent
    assert trained.checkpoint == out / "step-20.pt"
    assert {p.name for p in out.glob("*.pt")} == {"step-10.pt", "step-20.pt", "latest.pt"}
    # the gradient reaches the encoder through the frozen LLM, the Q-Formers and the projector
    middle, end = (torch.load(out / f"step-{n}.pt", weights_only=True)["encoder"] for n in (10, 20))
    assert not torch.equal(middle["frame_backbone.convs.0.weight"], end["frame_backbone.convs.0.weight"])


def test_a_resumed_run_continues_as_if_never_interrupted(
    calls: list[list[TrainingUtterance]], tiny_llm: Path, trained: TrainResult, tmp_path: Path
) -> None:
    first = train(calls, tiny_llm, tmp_path, replace(TINY, steps=3))
    resumed = train(calls, tiny_llm, tmp_path, replace(TINY, steps=6), resume=True)
    assert resumed.first_step == 3 and len(resumed.losses) == 6
    assert resumed.losses[:3] == first.losses
    # The first 6 steps of the uninterrupted 20-step run are a 6-step run: nothing in a step depends on
    # the total. Equal because batches, weights, optimizer state and RNG all come back from the checkpoint.
    assert resumed.losses == pytest.approx(trained.losses[:6], rel=1e-5)
    assert resumed.checkpoint == tmp_path / "step-6.pt" and (tmp_path / "latest.pt").is_file()


def test_resuming_with_other_settings_is_refused(
    calls: list[list[TrainingUtterance]], tiny_llm: Path, trained: TrainResult
) -> None:
    with pytest.raises(ValueError, match="lr"):
        train(calls, tiny_llm, trained.checkpoint.parent, replace(TINY, lr=1e-3), resume=True)


def test_trained_tokens_are_a_prefix_the_llm_reasoner_takes(
    dataset: Dataset, tiny_llm: Path, trained: TrainResult
) -> None:
    prefix = PrefixEncoder.from_checkpoint(trained.checkpoint.parent / "latest.pt", "cpu", llm_hidden_size=32)
    reasoner = LLMReasoner(LLMSettings(model_path=tiny_llm, device="cpu", explanation_tokens=0))
    assert prefix.hidden_size == reasoner.hidden_size == 32

    tokens = prefix.tokens(prefix.new_cache(), dataset[1][0])  # the "pleased" clip as a call's utterance
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


def test_training_runs_a_call_through_the_cache_serving_uses(dataset: Dataset) -> None:
    encoder, qformer = tiny_modules()
    call = a_call(dataset, 5)  # 5 utterances: 3 of them pooled out of the 2 the cache keeps as they are
    with torch.no_grad():
        trained = call_prefixes(encoder, qformer, [call], torch.device("cpu"))  # (5, Q + Qc, H)
    serving = PrefixEncoder(encoder, qformer, torch.device("cpu"))
    cache = serving.new_cache()
    served = torch.stack([serving.tokens(cache, u.features) for u in call])
    assert trained.shape == served.shape == (5, 8 + 4, 32)
    assert torch.allclose(trained, served, atol=1e-5)


def test_every_parameter_serving_uses_gets_a_gradient_from_a_call(dataset: Dataset) -> None:
    encoder, qformer = tiny_modules()
    encoder.train()
    qformer.train()
    tokens = call_prefixes(encoder, qformer, [a_call(dataset, 5)], torch.device("cpu"))
    # A random projection of the tokens: its gradient reaches every weight that shapes them (a sum of
    # LayerNorm outputs would be constant, its gradient zero but for rounding)
    readout = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(0))
    (tokens * readout).sum().backward()
    named = [*encoder.named_parameters(prefix="encoder"), *qformer.named_parameters(prefix="qformer")]
    without = [name for name, p in named if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert without == []
    assert {"qformer.summary_pos", "qformer.recent_pos"} <= {name for name, _ in named}


def test_the_training_prompt_is_the_one_serving_asks(dataset: Dataset, tiny_llm: Path) -> None:
    reasoner = LLMReasoner(LLMSettings(model_path=tiny_llm, device="cpu", explanation_tokens=0))
    request = ReasoningRequest(
        call="c1",
        utterance="u1",
        clues_text="face: smile 0.6-3.0 s (macro)",
        transcript="That is wonderful news.",
        candidates=("happy", "sad"),
        candidate_va=((0.8, 0.5), (-0.7, -0.4)),
    )
    utterance = TrainingUtterance(dataset[1][0], " happy.", request.clues_text, request.transcript)
    prompt = prompt_ids(reasoner.tokenizer, TINY.mode, utterance.clues_text, utterance.transcript)
    assert prompt == reasoner.rank_prompt_ids(request)
    # lm_inputs puts [prefix; that prompt; target]: only the target's tokens carry a loss
    embed = torch.nn.Embedding(len(reasoner.tokenizer), 32)
    target = torch.tensor([5, 6, 7])
    _, mask, labels = lm_inputs(torch.zeros(1, 12, 32), [torch.tensor(prompt)], [target], embed, pad_id=0)
    assert labels.shape == mask.shape == (1, 12 + len(prompt) + 3) and bool(mask.all())
    assert labels[0, -3:].tolist() == [5, 6, 7] and bool((labels[0, :-3] == -100).all())


def test_targets_are_the_answers_serving_reads_with_or_without_valence() -> None:
    rated = LabelledClip(Path("a.mp4"), ("happy", "glad"), 0.8, 0.4, "she smiles")
    unrated = LabelledClip(Path("b.mp4"), ("angry",), description="He frowns.")  # a category-only corpus
    assert target_text(rated) == " happy, because she smiles."
    assert target_text(unrated) == " angry, because he frowns."
    answer = parse_generated_answer(JSON_ANSWER_PREFIX + target_text(rated, "generate"), "m")
    assert (answer.labels[0][0], answer.valence, answer.arousal) == ("happy", 0.8, 0.4)
    generated = target_text(unrated, "generate")
    assert "valence" not in generated and '"explanation": "He frowns."' in generated


def test_weight_decay_falls_on_weight_matrices_only() -> None:
    encoder, qformer = tiny_modules()
    decayed, plain = optimizer_for([encoder, qformer], TINY).param_groups
    assert decayed["weight_decay"] == TINY.weight_decay and plain["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decayed["params"]) and all(p.dim() < 2 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(
        [*encoder.parameters(), *qformer.parameters()]
    )


def test_clips_of_one_manifest_call_train_as_its_utterances(dataset: Dataset) -> None:
    clips, features = dataset
    grouped = [replace(clip, groups={"call": "dialogue-1"}) for clip in clips[:2]] + list(clips[2:])
    calls = training_calls(grouped, features, TINY)
    assert [len(call) for call in calls] == [2] + [1] * (len(clips) - 2)
    assert [u.features for u in calls[0]] == features[:2]


def tiny_modules() -> tuple[GlobalLocalEncoder, VideoQFormer]:
    torch.manual_seed(0)
    encoder = GlobalLocalEncoder(TINY.encoder)
    qformer = VideoQFormer(replace(TINY.qformer, encoder_dim=TINY.encoder.n_embd, llm_hidden_size=32))
    return encoder, qformer


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
