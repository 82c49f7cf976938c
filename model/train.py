"""Training of encoder → Q-Formers → projector as a soft prompt of a frozen causal LM, on labelled clips."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from model.encoder import EncoderConfig, GlobalLocalEncoder
from model.evaluation import LabelledClip
from model.llm import LLMSettings, load_causal_lm, model_files, resolve_device, resolve_dtype
from model.qformer import CHECKPOINT_FORMAT, QFormerConfig, VideoQFormer

log = logging.getLogger(__name__)

INSTRUCTION = "How does the person in this video feel? Name the emotions, valence and arousal, and why."
IGNORE = -100  # label of positions that carry no loss (prefix, prompt, padding)


@dataclass(frozen=True, slots=True)
class ClipFeatures:
    """A decoded clip as the encoder takes it: sampled whole frames, their times, the speaker's face crops.

    Pixels stay uint8 (a quarter of float32's memory and cache size); `encoder_batch` scales them to [0, 1].
    """

    frames: Tensor  # (T, 3, S, S) uint8 RGB, whole frames resized to S = EncoderConfig.frame_size
    frame_times: Tensor  # (T,) float64 seconds since the clip's first frame
    face_crops: Tensor  # (T, 3, s, s) uint8 RGB aligned crops, s = EncoderConfig.crop_size; zeros: no face
    face_mask: Tensor  # (T,) bool: True where the speaker's face was found

    def as_dict(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1e-4
    steps: int = 1000
    batch_size: int = 4
    checkpoint_every: int = 100
    seed: int = 0
    max_target_tokens: int = 96  # longer targets are cut (the end-of-text token counts)
    device: str = "auto"  # "cpu", "cuda" or "auto"
    weight_decay: float = 0.01
    grad_clip: float = 1.0
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


def target_text(clip: LabelledClip) -> str:
    """What the LLM learns to say about a clip, e.g. "Emotion: happy, delighted. Valence 0.80, arousal 0.40."."""
    text = f"Emotion: {', '.join(clip.labels)}. Valence {clip.valence:.2f}, arousal {clip.arousal:.2f}."
    description = clip.description.strip()
    if description:
        description = description[0].upper() + description[1:]
        text += f" {description}" + ("" if description[-1] in ".!?" else ".")
    return text


def encoder_batch(clips: Sequence[ClipFeatures], device: torch.device) -> dict[str, Tensor]:
    """Clips padded to the longest, as GlobalLocalEncoder's keyword arguments (frame_mask marks padding)."""
    T = max(len(c.frame_times) for c in clips)

    def pad(x: Tensor, value: float | bool = 0) -> Tensor:  # (t, ...) -> (T, ...)
        return F.pad(x, (0, 0) * (x.dim() - 1) + (0, T - len(x)), value=value) if len(x) < T else x

    def stack(name: str) -> Tensor:
        return torch.stack([pad(getattr(c, name)) for c in clips]).to(device)

    return {
        "frames": stack("frames").float() / 255,  # (B, T, 3, S, S)
        "frame_times": stack("frame_times"),  # (B, T) float64
        "face_crops": stack("face_crops").float() / 255,  # (B, T, 3, s, s)
        "face_mask": stack("face_mask"),  # (B, T) bool
        "frame_mask": torch.stack([pad(torch.ones(len(c.frame_times), dtype=torch.bool)) for c in clips]).to(
            device
        ),  # (B, T) bool
    }


def prefix_embeddings(encoder: GlobalLocalEncoder, qformer: VideoQFormer, batch: dict[str, Tensor]) -> Tensor:
    """Each clip as a one-utterance call: encoder tokens → utterance + call queries → (B, Q + Qc, H)."""
    encoded = encoder(**batch)  # tokens (B, T*, Ce), mask (B, T*)
    utterance = qformer.encode_utterance(encoded.tokens, encoded.mask)  # (B, Q, C)
    return qformer(utterance[:, None])  # history of one utterance (B, 1, Q, C)


def prompt_ids(tokenizer: Any) -> list[int]:
    """The instruction, as a chat turn ending where the assistant's answer begins when the tokenizer has one."""
    if tokenizer.chat_template:
        messages = [{"role": "user", "content": INSTRUCTION}]
        encoded = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return list(encoded["input_ids"])
    return list(tokenizer(f"{INSTRUCTION}\n", add_special_tokens=True).input_ids)


def target_ids(tokenizer: Any, text: str, max_tokens: int) -> list[int]:
    """The target's tokens and an end-of-text token (so the LM learns to stop), at most max_tokens.

    No leading space: both prompts end in a newline, after which an answer starts with its first word.
    """
    ids = list(tokenizer(text, add_special_tokens=False).input_ids)
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return ids[:max_tokens]


def lm_inputs(
    prefix: Tensor, prompt: Tensor, targets: Sequence[Tensor], embed: torch.nn.Module, pad_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """[prefix; prompt; target; padding] → input embeddings (B, L, H), attention mask and labels (B, L)."""
    B, P, _ = prefix.shape  # prefix (B, P, H); prompt (Lp,) ids; targets B × (Lt_b,) ids
    M = max(len(t) for t in targets)
    target = torch.full((B, M), pad_id, dtype=torch.long, device=prefix.device)
    valid = torch.zeros(B, M, dtype=torch.bool, device=prefix.device)
    for b, ids in enumerate(targets):
        target[b, : len(ids)], valid[b, : len(ids)] = ids, True
    text = embed(torch.cat([prompt.expand(B, -1), target], dim=1))  # (B, Lp + M, H)
    embeds = torch.cat([prefix.to(text.dtype), text], dim=1)  # (B, P + Lp + M, H)
    head = torch.ones(B, P + len(prompt), dtype=torch.bool, device=prefix.device)
    mask = torch.cat([head, valid], dim=1)
    labels = torch.cat(
        [torch.full_like(head, IGNORE, dtype=torch.long), target.masked_fill(~valid, IGNORE)], 1
    )
    return embeds, mask.long(), labels


def target_loss(llm: Any, embeds: Tensor, mask: Tensor, labels: Tensor) -> Tensor:
    """Causal-LM cross-entropy of each target token given everything before it, mean over target tokens."""
    logits = llm(inputs_embeds=embeds, attention_mask=mask).logits  # (B, L, V)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE)


def batch_indices(step: int, count: int, batch_size: int, seed: int) -> list[int]:
    """The clips of a step (1-based): a fresh shuffle per epoch, fixed by seed and step, so resuming repeats it."""
    picked = []
    for position in range((step - 1) * batch_size, step * batch_size):
        epoch, k = divmod(position, count)
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        picked.append(int(order[k]))
    return picked


def train(
    features: Sequence[ClipFeatures],
    targets: Sequence[str],
    llm_path: Path,
    out_dir: Path,
    config: TrainConfig,
    resume: bool = False,
    gguf_file: str | None = None,
) -> TrainResult:
    """Trains encoder, Q-Formers and projector so that the frozen LLM, given their tokens, says each target."""
    if not features or len(features) != len(targets):
        raise ValueError(
            f"need one target per clip and at least one clip, got {len(features)}, {len(targets)}"
        )
    out_dir, latest = Path(out_dir), Path(out_dir) / "latest.pt"
    folder = check_can_start(out_dir, resume, llm_path, gguf_file)
    check_sizes(features, config.encoder)  # before the LLM loads, so that a mistake costs no time
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
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    step = 0
    losses: list[float] = []
    if resume and latest.exists():
        step, losses = restore(latest, config, encoder, qformer, optimizer)
        log.info("resuming %s at step %d of %d", out_dir, step, config.steps)
    elif resume:
        log.warning("nothing to resume in %s; training from step 0", out_dir)
    first_step = step

    prompt = torch.tensor(prompt_ids(tokenizer), dtype=torch.long, device=device)
    answers = [
        torch.tensor(target_ids(tokenizer, t, config.max_target_tokens), device=device) for t in targets
    ]
    pad_id = next((int(i) for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder.train()
    qformer.train()
    with tqdm(total=config.steps, initial=step, desc="train", unit="step") as bar:
        while step < config.steps:
            step += 1
            picked = batch_indices(step, len(features), config.batch_size, config.seed)
            prefix = prefix_embeddings(encoder, qformer, encoder_batch([features[i] for i in picked], device))
            loss = target_loss(llm, *lm_inputs(prefix, prompt, [answers[i] for i in picked], embed, pad_id))
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
    return model_files(LLMSettings(model_path=llm_path, gguf_file=gguf_file))


def check_sizes(features: Sequence[ClipFeatures], cfg: EncoderConfig) -> None:
    for clip in features:
        if clip.frames.shape[-1] != cfg.frame_size or clip.face_crops.shape[-1] != cfg.crop_size:
            raise ValueError(
                f"clip features of frame size {clip.frames.shape[-1]} and crop size {clip.face_crops.shape[-1]} "
                f"do not fit the encoder's frame_size {cfg.frame_size} and crop_size {cfg.crop_size}"
            )


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
        # The same keys as model.qformer.save_checkpoint, so inference loads a training checkpoint as it is
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
