"""Training of the emotion heads (model/emotion/heads.py) on labelled utterance features; deterministic, CPU, minutes.

Each head is a small MLP over standardised features, trained with class-balanced cross-entropy. The fusion is
fitted on out-of-fold readings (speaker-grouped folds, so it learns how far a head's reading of an *unseen*
speaker can be trusted), with modality dropout: each reading is dropped at random, so the fusion also
answers well for a face alone, a voice alone, or nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from model.emotion.heads import Fusion, HeadReading, Mlp
from model.emotion.vocabulary import FAMILIES
from model.training.evaluation import family_scores


@dataclass(frozen=True, slots=True)
class HeadConfig:
    hidden: int = 256
    dropout: float = 0.3
    input_noise: float = 0.1  # Gaussian noise on the standardised features while training
    epochs: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2  # on weight matrices only
    label_smoothing: float = 0.1
    folds: int = 4  # speaker-grouped folds for the fusion's out-of-fold readings
    modality_dropout: float = 0.3
    seed: int = 0


@dataclass(frozen=True)
class LabelledFeatures:
    """(N, F) features of N utterances, their family index (into FAMILIES) and their speaker."""

    features: npt.NDArray[np.float32]
    families: npt.NDArray[np.int64]
    speakers: Sequence[str]
    groups: dict[str, Sequence[str]] = field(default_factory=dict)  # e.g. {"dataset": [...]} for reports


def train_mlp(data: LabelledFeatures, config: HeadConfig) -> Mlp:
    """One head: standardise, then train Linear → ReLU → Dropout → Linear with class-balanced loss."""
    _seed(config.seed)
    x = torch.from_numpy(data.features.astype(np.float32))
    y = torch.from_numpy(data.families.astype(np.int64))
    mean = x.mean(dim=0)
    std = x.std(dim=0).clamp_min(1e-4)
    x = (x - mean) / std
    net = nn.Sequential(
        nn.Linear(x.shape[1], config.hidden),  # (N, F) → (N, H)
        nn.ReLU(),
        nn.Dropout(config.dropout),
        nn.Linear(config.hidden, len(FAMILIES)),  # (N, H) → (N, 7)
    )
    loss_fn = nn.CrossEntropyLoss(weight=_balanced(y), label_smoothing=config.label_smoothing)
    decay = [p for p in net.parameters() if p.dim() >= 2]
    no_decay = [p for p in net.parameters() if p.dim() < 2]
    optimiser = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    steps = config.epochs * max(1, -(-len(x) // config.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr, total_steps=steps)
    generator = torch.Generator().manual_seed(config.seed)
    net.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), config.batch_size):
            batch = order[start : start + config.batch_size]
            noisy = x[batch] + config.input_noise * torch.randn(x[batch].shape, generator=generator)
            loss = loss_fn(net(noisy), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    hidden, out = net[0], net[3]
    assert isinstance(hidden, nn.Linear) and isinstance(out, nn.Linear)
    return Mlp(mean.numpy(), std.numpy(), [_numpy(hidden), _numpy(out)])


def out_of_fold_readings(data: LabelledFeatures, config: HeadConfig) -> list[HeadReading]:
    """Each utterance read by a head trained without its speaker (speakers split into `folds` groups)."""
    speakers = sorted(set(data.speakers))
    rng = np.random.default_rng(config.seed)
    rng.shuffle(speakers)
    fold_of = {speaker: i % config.folds for i, speaker in enumerate(speakers)}
    folds = np.array([fold_of[s] for s in data.speakers])
    readings: list[HeadReading | None] = [None] * len(folds)
    for fold in range(config.folds):
        held = np.flatnonzero(folds == fold)
        if not len(held):
            continue
        kept = np.flatnonzero(folds != fold)
        head = train_mlp(subset(data, kept), config)
        for i in held:
            readings[i] = HeadReading.from_logits(head.logits(data.features[i]))
    return [r for r in readings if r is not None]


def fit_fusion(
    readings: Mapping[str, Sequence[HeadReading | None]],
    families: npt.NDArray[np.int64],
    config: HeadConfig,
    steps: int = 500,
    say: Mapping[str, Sequence[float]] | None = None,
) -> Fusion:
    """bias + Σ say_m · (scale_m · gate_m · log p_m + shift_m) over the readings present (Fusion), with modality
    dropout; `say` (per modality, one per row, default 1) as `Fusion.fuse` takes it live."""
    _seed(config.seed)
    n = len(families)
    k = len(FAMILIES)
    logp = {}
    present = {}
    gate = {}
    modalities = [m for m in Fusion.MODALITIES if m in readings]
    for modality in modalities:
        rows = readings[modality]
        logp[modality] = torch.tensor(
            np.stack([r.log_probs if r is not None else np.zeros(k) for r in rows]), dtype=torch.float32
        )
        says = (say or {}).get(modality, [1.0] * n)
        present[modality] = torch.tensor(
            [float(r is not None) * w for r, w in zip(rows, says, strict=True)], dtype=torch.float32
        )
        gate[modality] = torch.tensor(
            [Fusion.gate(modality, r) if r is not None else 1.0 for r in rows], dtype=torch.float32
        )
    bias = torch.zeros(k, requires_grad=True)
    scales = {m: torch.tensor(1.0, requires_grad=True) for m in modalities}
    shifts = {m: torch.zeros(k, requires_grad=True) for m in modalities}
    y = torch.from_numpy(families.astype(np.int64))
    loss_fn = nn.CrossEntropyLoss(weight=_balanced(y))
    optimiser = torch.optim.Adam([bias, *scales.values(), *shifts.values()], lr=0.05)
    generator = torch.Generator().manual_seed(config.seed)
    for _ in range(steps):
        logits = bias.expand(n, k).clone()
        for m in modalities:
            kept = present[m] * (torch.rand(n, generator=generator) >= config.modality_dropout).float()
            logits = logits + kept[:, None] * (scales[m] * gate[m][:, None] * logp[m] + shifts[m])
        # a small pull of unlearnable parameters (a modality never present) towards "trust it as it is"
        penalty = sum(((scales[m] - 1.0) ** 2 + (shifts[m] ** 2).sum()) for m in modalities)
        loss = loss_fn(logits, y) + 1e-3 * penalty
        optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
    return Fusion(
        bias=bias.detach().numpy().copy(),
        scales={m: float(scales[m].detach()) for m in modalities},
        shifts={m: shifts[m].detach().numpy().copy() for m in modalities},
    )


def subset(data: LabelledFeatures, rows: npt.NDArray[np.int64]) -> LabelledFeatures:
    return LabelledFeatures(
        features=data.features[rows],
        families=data.families[rows],
        speakers=[data.speakers[i] for i in rows],
        groups={key: [values[i] for i in rows] for key, values in data.groups.items()},
    )


def scores(truth: npt.NDArray[np.int64], predicted: npt.NDArray[np.int64]) -> dict[str, Any]:
    """Accuracy, unweighted average recall and weighted F1 of family indices, as `microemo eval` scores them."""
    families = family_scores([FAMILIES[i] for i in truth], [FAMILIES[i] for i in predicted])
    return {"utterances": int(len(truth)), **{k: families[k] for k in ("accuracy", "uar", "weighted_f1")}}


def _balanced(families: torch.Tensor) -> torch.Tensor:
    """Class weights for the loss: each family present weighs as much as the others together; absent ones 0."""
    counts = torch.bincount(families, minlength=len(FAMILIES)).float()
    return torch.where(counts > 0, counts.sum() / (len(FAMILIES) * counts.clamp_min(1)), 0.0)


def _numpy(layer: nn.Linear) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    return layer.weight.detach().numpy().copy(), layer.bias.detach().numpy().copy()


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
