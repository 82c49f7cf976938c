"""Training of encoder → Q-Formers → projector as a soft prompt of a frozen causal LM, on labelled calls.

Training asks as serving asks: each utterance of a call goes through the same incremental Q-Former cache
(model.microemo.prefix.utterance_tokens), its tokens stand before the same prompt (model.llm.prompt_ids: clues,
transcript, the stage's template), and the target is the continuation serving reads as the answer
(model.llm.answer_text).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from model.llm import (
    CONTENT_FREE,
    Mode,
    answer_text,
    load_causal_lm,
    model_files,
    prompt_ids,
    resolve_device,
    resolve_dtype,
    text_ids,
)
from model.microemo.clip import ClipFeatures, check_sizes
from model.microemo.encoder import EncoderConfig, GlobalLocalEncoder
from model.microemo.prefix import utterance_tokens
from model.microemo.qformer import CHECKPOINT_FORMAT, IncrementalQFormerCache, QFormerConfig, VideoQFormer
from model.training.evaluation import LabelledClip

log = logging.getLogger(__name__)

IGNORE = -100  # label of positions that carry no loss (prefix, prompt, padding)


@dataclass(frozen=True, slots=True)
class TrainingUtterance:
    """One utterance of a training call: its clip, what the prompt says of it, and the answer to learn."""

    features: ClipFeatures
    target: str  # the continuation of the mode's answer prefix (answer_text)
    clues_text: str = CONTENT_FREE  # as the fast estimate writes them at serving time; N/A: not known
    transcript: str = CONTENT_FREE
    candidates: tuple[str, ...] = ()  # generate mode's suggested labels


TrainingCall = Sequence[TrainingUtterance]  # a call's utterances in the order they were spoken


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1e-4
    steps: int = 1000
    batch_size: int = 4  # calls per step
    checkpoint_every: int = 100
    seed: int = 0
    max_target_tokens: int = 96  # longer targets are cut (the end-of-text token counts)
    device: str = "auto"  # "cpu", "cuda" or "auto"
    weight_decay: float = 0.01  # on weight matrices only; never on biases, norms' gains or 1-D vectors
    grad_clip: float = 1.0
    mode: Mode = "rank"  # the LLM stage's emotion.llm.mode the projector will serve: its prompt and answer
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    # encoder_dim and llm_hidden_size are taken from the encoder and the LLM
    qformer: QFormerConfig = field(default_factory=QFormerConfig)

    def __post_init__(self) -> None:
        if min(self.steps, self.batch_size, self.checkpoint_every, self.max_target_tokens) < 1:
            raise ValueError("steps, batch_size, checkpoint_every and max_target_tokens must be at least 1")


# Fields a resumed run may change; any other difference would make it a different training run.
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "device")


@dataclass(frozen=True, slots=True)
class TrainResult:
    losses: list[float]  # one per step, from step 1 (a resumed run includes the steps before it)
    checkpoint: Path  # the last step's checkpoint, also at out_dir / "latest.pt"
    first_step: int  # steps already done when this run started (0 unless resumed)


class CheckpointExistsError(FileExistsError):
    """out_dir holds a training run and resume was not asked for."""


def target_text(clip: LabelledClip, mode: Mode = "rank") -> str:
    """What the LLM learns to answer about a clip, as serving reads the answer in `mode`.

    rank: " happy, because she smiles." after "The speaker feels"; generate: the JSON answer after its
    opening. Valence and arousal (generate mode) only where the manifest gives them.
    """
    return answer_text(mode, clip.labels, clip.valence, clip.arousal, clip.description)


def call_prefixes(
    encoder: GlobalLocalEncoder, qformer: VideoQFormer, calls: Sequence[TrainingCall], device: torch.device
) -> Tensor:
    """Every utterance of every call → (U, Q + Qc, H) LLM tokens, each call through a fresh incremental cache,
    utterance by utterance, as serving (model.microemo.prefix.PrefixEncoder.tokens) computes them; with gradients."""
    tokens = []
    for call in calls:
        cache = IncrementalQFormerCache(qformer)
        tokens.append(utterance_tokens(encoder, cache, [u.features for u in call], device))
    return torch.cat(tokens)


def target_ids(tokenizer: Any, text: str, max_tokens: int) -> list[int]:
    """The target's tokens and an end-of-text token (so the LM learns to stop), at most max_tokens.

    Tokenised on its own, as serving tokenises a label (" happy") after the prompt's answer prefix.
    """
    ids = text_ids(tokenizer, text)
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return ids[:max_tokens]


def lm_inputs(
    prefix: Tensor, prompts: Sequence[Tensor], targets: Sequence[Tensor], embed: torch.nn.Module, pad_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """[prefix; prompt; target; padding] → input embeddings (B, L, H), attention mask and labels (B, L)."""
    B, P, _ = prefix.shape  # prefix (B, P, H); prompts and targets: B × (L_b,) ids each
    M = max(len(p) + len(t) for p, t in zip(prompts, targets, strict=True))
    ids = torch.full((B, M), pad_id, dtype=torch.long, device=prefix.device)
    labels = torch.full((B, M), IGNORE, dtype=torch.long, device=prefix.device)
    valid = torch.zeros(B, M, dtype=torch.bool, device=prefix.device)
    for b, (prompt, target) in enumerate(zip(prompts, targets, strict=True)):
        n, m = len(prompt), len(target)
        ids[b, : n + m] = torch.cat([prompt, target])
        labels[b, n : n + m] = target
        valid[b, : n + m] = True
    text = embed(ids)  # (B, M, H)
    embeds = torch.cat([prefix.to(text.dtype), text], dim=1)  # (B, P + M, H)
    head = torch.ones(B, P, dtype=torch.bool, device=prefix.device)
    mask = torch.cat([head, valid], dim=1)
    labels = torch.cat([torch.full_like(head, IGNORE, dtype=torch.long), labels], dim=1)
    return embeds, mask.long(), labels


def target_loss(llm: Any, embeds: Tensor, mask: Tensor, labels: Tensor) -> Tensor:
    """Causal-LM cross-entropy of each target token given everything before it, mean over target tokens."""
    logits = llm(inputs_embeds=embeds, attention_mask=mask).logits  # (B, L, V)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE)


def optimizer_for(modules: Sequence[torch.nn.Module], config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices (2 or more dims) only: decaying biases and LayerNorm gains
    toward zero only hurts (as nanoGPT and most transformer recipes group them)."""
    params = [p for module in modules for p in module.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr)


def batch_indices(step: int, count: int, batch_size: int, seed: int) -> list[int]:
    """The calls of a step (1-based): a fresh shuffle per epoch, fixed by seed and step, so resuming repeats it."""
    picked = []
    for position in range((step - 1) * batch_size, step * batch_size):
        epoch, k = divmod(position, count)
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        picked.append(int(order[k]))
    return picked


def train(
    calls: Sequence[TrainingCall],
    llm_path: Path,
    out_dir: Path,
    config: TrainConfig,
    resume: bool = False,
    gguf_file: str | None = None,
) -> TrainResult:
    """Trains encoder, Q-Formers and projector so that the frozen LLM, given their tokens, says each target."""
    if not calls or not all(calls):
        raise ValueError(f"need at least one call and an utterance in each, got {[len(c) for c in calls]}")
    out_dir, latest = Path(out_dir), Path(out_dir) / "latest.pt"
    folder = check_can_start(out_dir, resume, llm_path, gguf_file)
    check_sizes([u.features for call in calls for u in call], config.encoder)  # before the LLM loads
    device = resolve_device(config.device)
    tokenizer, llm = load_causal_lm(folder, gguf_file, device, resolve_dtype("auto", device))
    llm.requires_grad_(False)
    embed = llm.get_input_embeddings()

    torch.manual_seed(config.seed)
    encoder = GlobalLocalEncoder(config.encoder).to(device)
    qformer_cfg = replace(
        config.qformer, encoder_dim=config.encoder.n_embd, llm_hidden_size=embed.weight.shape[1]
    )
    qformer = VideoQFormer(qformer_cfg).to(device)
    params = [*encoder.parameters(), *qformer.parameters()]
    optimizer = optimizer_for([encoder, qformer], config)
    step = 0
    losses: list[float] = []
    if resume and latest.exists():
        step, losses = restore(latest, config, encoder, qformer, optimizer)
        log.info("resuming %s at step %d of %d", out_dir, step, config.steps)
    elif resume:
        log.warning("nothing to resume in %s; training from step 0", out_dir)
    first_step = step

    def ids(values: list[int]) -> Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    prompts = [
        [ids(prompt_ids(tokenizer, config.mode, u.clues_text, u.transcript, u.candidates)) for u in call]
        for call in calls
    ]
    answers = [
        [ids(target_ids(tokenizer, u.target, config.max_target_tokens)) for u in call] for call in calls
    ]
    pad_id = next((int(i) for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder.train()
    qformer.train()
    with tqdm(total=config.steps, initial=step, desc="train", unit="step") as bar:
        while step < config.steps:
            step += 1
            picked = batch_indices(step, len(calls), config.batch_size, config.seed)
            prefix = call_prefixes(encoder, qformer, [calls[i] for i in picked], device)  # (U, P, H)
            inputs = lm_inputs(
                prefix,
                [p for i in picked for p in prompts[i]],
                [a for i in picked for a in answers[i]],
                embed,
                pad_id,
            )
            loss = target_loss(llm, *inputs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            losses.append(loss.item())
            bar.update()
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if step % config.checkpoint_every == 0 or step == config.steps:
                save_training_checkpoint(out_dir, step, config, encoder, qformer, optimizer, losses, folder)
    return TrainResult(losses, out_dir / f"step-{step}.pt", first_step)


def check_can_start(out_dir: Path, resume: bool, llm_path: Path, gguf_file: str | None = None) -> Path:
    """The LLM's folder, after the checks that need no model loaded, so that a run fails before slow work."""
    latest = Path(out_dir) / "latest.pt"
    if latest.exists() and not resume:
        raise CheckpointExistsError(
            f"{out_dir} already holds a training run ({latest}); resume it or pick another"
        )
    return model_files(llm_path, gguf_file)[0]


def save_training_checkpoint(
    out_dir: Path,
    step: int,
    config: TrainConfig,
    encoder: GlobalLocalEncoder,
    qformer: VideoQFormer,
    optimizer: torch.optim.Optimizer,
    losses: list[float],
    llm: Path,
) -> Path:
    """step-N.pt and latest.pt; load_checkpoint reads the modules back, `restore` the training state too."""
    payload = {
        # The same keys as model.microemo.qformer.save_checkpoint, so inference loads a training checkpoint as it is
        "format": CHECKPOINT_FORMAT,
        "qformer_config": asdict(qformer.cfg),
        "qformer": qformer.state_dict(),
        "encoder_config": asdict(encoder.cfg),
        "encoder": encoder.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "train_config": asdict(config),
        "losses": list(losses),
        "rng": torch.get_rng_state(),
        "llm": str(llm),
    }
    path = out_dir / f"step-{step}.pt"
    for target in (path, out_dir / "latest.pt"):
        partial = target.with_suffix(".partial")
        torch.save(payload, partial)
        os.replace(partial, target)  # a crash mid-write never leaves a truncated checkpoint behind
    return path


def restore(
    path: Path,
    config: TrainConfig,
    encoder: GlobalLocalEncoder,
    qformer: VideoQFormer,
    optimizer: torch.optim.Optimizer,
) -> tuple[int, list[float]]:
    """Loads a training checkpoint into the modules and optimizer; returns its step and loss history."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    saved, wanted = payload["train_config"], asdict(config)
    changed = sorted(k for k in wanted if k not in RESUMABLE_CHANGES and saved.get(k) != wanted[k])
    if changed:
        raise ValueError(f"{path} was trained with other settings of {changed}; resume with the same ones")
    width = payload["qformer_config"]["llm_hidden_size"]
    if width != qformer.cfg.llm_hidden_size:
        raise ValueError(
            f"{path} was trained for the LLM in {payload['llm']} (hidden size {width}); "
            f"this LLM's hidden size is {qformer.cfg.llm_hidden_size}"
        )
    encoder.load_state_dict(payload["encoder"])
    qformer.load_state_dict(payload["qformer"])
    optimizer.load_state_dict(payload["optimizer"])
    torch.set_rng_state(payload["rng"])
    return int(payload["step"]), [float(x) for x in payload["losses"]]
