"""What the words say: text head, fine labels and conversation context on MiniLM embeddings, run in numpy.

Three small learned models read the 384-d sentence embedding the pipeline already computes for a transcript
(model/training/fit_text.py trains them; weights in one .npz):

- the **text head** (an MLP) gives the basic families and the valence sign of an utterance on its own;
- the **fine labels** (a sigmoid layer) score GoEmotions' 27 emotions + neutral, each with its threshold and
  the vocabulary word that names it;
- the **context model** reads an utterance with everything said before it in the call, in order, by both
  sides: a GRU over per-utterance vectors [embedding, text-head logits, same-speaker-as-current flag]. The
  flag depends on who speaks now, so a call keeps one GRU state per speaker's point of view (every earlier
  utterance flagged as theirs or not) plus one for someone who has not spoken yet (every flag 0), which is
  exactly where a new speaker's view starts. Each new utterance advances every view by one step: the cost per
  utterance is flat however long the call, and the answer equals a reading of the whole history from scratch.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from model.emotion.vocabulary import DATA_DIR, FAMILIES

DEFAULT_TEXT_HEADS = DATA_DIR / "heads" / "heads-2.npz"  # the words' heads ship inside heads/2
VALENCE_CLASSES = ("negative", "neutral", "positive")
EMBEDDING_DIM = 384
# The prefixes of the words' heads' arrays (TextHead, ContextModel, FineLabels), alone or inside a heads file
ARRAY_PREFIXES = ("text", "context", "fine")

Array = npt.NDArray[np.float32]


class TextHeadsMissingError(FileNotFoundError):
    """The configured text heads file does not exist or lacks a part."""


@dataclass(frozen=True, slots=True)
class TextReading:
    """The reading of one utterance's words (alone, or with the conversation before it)."""

    families: dict[str, float]  # over FAMILIES, summing to 1
    valence: float  # P(positive) - P(negative), -1..1
    family_logits: Array  # (7,) in FAMILIES order

    @property
    def family(self) -> str:
        return max(self.families, key=self.families.__getitem__)


class TextHead:
    """Standardised embedding → Linear/ReLU → family logits (7) and valence-sign logits (3)."""

    def __init__(self, arrays: Mapping[str, Array]) -> None:
        self.mean, self.std = arrays["text.mean"], arrays["text.std"]
        self.hidden = (arrays["text.hidden.weight"], arrays["text.hidden.bias"])  # (H, 384), (H,)
        self.family = (arrays["text.family.weight"], arrays["text.family.bias"])  # (7, H), (7,)
        self.valence = (arrays["text.valence.weight"], arrays["text.valence.bias"])  # (3, H), (3,)

    def standardise(self, embedding: Array) -> Array:
        vector = np.asarray(embedding, dtype=np.float32).reshape(-1)
        if vector.shape != self.mean.shape:
            raise ValueError(f"expected a {self.mean.shape[0]}-d sentence embedding, got {vector.shape}")
        return (vector - self.mean) / self.std

    def logits(self, embedding: Array) -> tuple[Array, Array]:
        """(7,) family logits and (3,) valence logits of an L2-normalised (384,) embedding."""
        x = self.standardise(embedding)
        hidden = np.maximum(self.hidden[0] @ x + self.hidden[1], 0.0)
        return self.family[0] @ hidden + self.family[1], self.valence[0] @ hidden + self.valence[1]


class FineLabels:
    """GoEmotions' labels as independent sigmoid scores of the embedding, each with a decision threshold."""

    def __init__(self, arrays: Mapping[str, Array], labels: Sequence[str], words: Mapping[str, str]) -> None:
        self.mean, self.std = arrays["fine.mean"], arrays["fine.std"]
        self.weight, self.bias = arrays["fine.weight"], arrays["fine.bias"]  # (L, 384), (L,)
        self.thresholds = arrays["fine.threshold"]  # (L,), chosen on GoEmotions dev
        self.labels = tuple(labels)
        self.words = dict(words)  # label → the emotion vocabulary's word for it

    def scores(self, embedding: Array) -> Array:
        """(L,) probability of each label, in `labels` order."""
        x = (np.asarray(embedding, dtype=np.float32).reshape(-1) - self.mean) / self.std
        return _sigmoid(self.weight @ x + self.bias)

    def present(self, embedding: Array) -> list[tuple[str, float]]:
        """The labels whose score passes their threshold, best first (may be empty)."""
        scores = self.scores(embedding)
        chosen = np.flatnonzero(scores >= self.thresholds)
        return [
            (self.labels[i], float(scores[i])) for i in chosen[np.argsort(-scores[chosen], kind="stable")]
        ]


class ContextModel:
    """A GRU over [standardised embedding, text-head family logits, same-speaker flag] and a linear read-out."""

    def __init__(self, arrays: Mapping[str, Array]) -> None:
        # torch.nn.GRU's layout: gates stacked (reset, update, new); input (3G, I), hidden (3G, G)
        weight_ih = arrays["context.gru.weight_ih"]
        self.weight_ih_core, self.weight_ih_flag = weight_ih[:, :-1], weight_ih[:, -1]
        self.bias_ih = arrays["context.gru.bias_ih"]
        self.weight_hh, self.bias_hh = arrays["context.gru.weight_hh"], arrays["context.gru.bias_hh"]
        self.out = (arrays["context.out.weight"], arrays["context.out.bias"])  # (7, G + 7), (7,)
        self.hidden_size = self.weight_hh.shape[1]
        # a GRU trained without the embedding reads only [family logits, flag]
        self.reads_embedding = weight_ih.shape[1] == EMBEDDING_DIM + len(FAMILIES) + 1

    def input_gates(self, standardised: Array, family_logits: Array) -> Array:
        """(3G,) the input's share of the gates for flag 0 (add `weight_ih_flag` for flag 1)."""
        if not self.reads_embedding:
            return self.weight_ih_core @ family_logits + self.bias_ih
        return self.weight_ih_core @ np.concatenate([standardised, family_logits]) + self.bias_ih

    def step(self, state: Array, gates_x: Array) -> Array:
        """One GRU step: (G,) state and (3G,) input gates → (G,) next state."""
        g = self.hidden_size
        gates_h = self.weight_hh @ state + self.bias_hh
        reset = _sigmoid(gates_x[:g] + gates_h[:g])
        update = _sigmoid(gates_x[g : 2 * g] + gates_h[g : 2 * g])
        new = np.tanh(gates_x[2 * g :] + reset * gates_h[2 * g :])
        return ((1.0 - update) * new + update * state).astype(np.float32)

    def logits(self, state: Array, family_logits: Array) -> Array:
        return self.out[0] @ np.concatenate([state, family_logits]) + self.out[1]


@dataclass(frozen=True, slots=True)
class ContextReading:
    """An utterance read with the conversation before it, and its words alone for comparison."""

    speaker: str
    turn: int  # 0 for the call's first utterance
    contextual: TextReading  # families from the context model; valence from the text head
    text: TextReading  # the words alone


class ConversationContext:
    """One call's conversation: `add` each utterance in order; each is read with all that came before.

    Holds one GRU state per speaker who has spoken (at most `max_speakers`, the least recently heard dropped
    first) and one for a speaker not heard yet: the state's size depends on the number of speakers, never on
    how many utterances the call has had.
    """

    def __init__(self, heads: DialogueHeads, max_speakers: int = 16) -> None:
        self.heads = heads
        self.max_speakers = max_speakers
        self.turns = 0
        self._newcomer = np.zeros(heads.context.hidden_size, dtype=np.float32)
        self._views: OrderedDict[str, Array] = OrderedDict()  # speaker → state, least recently heard first

    def add(self, speaker: str, embedding: Array) -> ContextReading:
        """Read `speaker`'s new utterance (its L2-normalised (384,) embedding) with the call so far."""
        heads, context = self.heads, self.heads.context
        family_logits, valence_logits = heads.text.logits(embedding)
        gates = context.input_gates(heads.text.standardise(embedding), family_logits)
        if speaker not in self._views:
            self._views[speaker] = self._newcomer.copy()
        for view in self._views:
            own = view == speaker
            self._views[view] = context.step(
                self._views[view], gates + context.weight_ih_flag if own else gates
            )
        self._newcomer = context.step(self._newcomer, gates)
        self._views.move_to_end(speaker)
        while len(self._views) > self.max_speakers:
            self._views.popitem(last=False)
        contextual_logits = context.logits(self._views[speaker], family_logits)
        text = _reading(family_logits, valence_logits)
        reading = ContextReading(
            speaker=speaker,
            turn=self.turns,
            contextual=_reading(contextual_logits, valence_logits),
            text=text,
        )
        self.turns += 1
        return reading

    def peek(self, speaker: str, embedding: Array) -> ContextReading:
        """What `add` would read, leaving the conversation as it was (an utterance still being spoken)."""
        saved = (self.turns, self._newcomer, OrderedDict(self._views))
        try:
            return self.add(speaker, embedding)
        finally:
            self.turns, self._newcomer, self._views = saved

    @property
    def state_size(self) -> int:
        """Numbers held for this call (grows with its speakers, not with its utterances)."""
        return int(self._newcomer.size + sum(state.size for state in self._views.values()))


@dataclass(frozen=True)
class DialogueHeads:
    """The text head, the fine labels and the context model, loaded from one .npz."""

    name: str  # e.g. "text/2"
    text: TextHead
    fine: FineLabels
    context: ContextModel
    meta: dict[str, Any]  # what they were trained on, with their validation scores

    @classmethod
    def load(cls, path: Path = DEFAULT_TEXT_HEADS) -> DialogueHeads:
        if not Path(path).is_file():
            raise TextHeadsMissingError(
                f"no text heads file at {path} (train one: python -m model.training.fit_text)"
            )
        with np.load(path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
        meta = json.loads(str(arrays.pop("meta")))
        return cls.from_arrays(
            arrays, meta.get("text", meta), str(path)
        )  # a heads file keeps theirs in "text"

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Array], meta: dict[str, Any], source: str) -> DialogueHeads:
        """The heads from arrays named as `load` reads them (also inside a heads file: model/emotion/heads.py)."""
        path = source
        if tuple(meta["families"]) != FAMILIES:
            raise TextHeadsMissingError(f"{path}: families {meta['families']} are not {FAMILIES}")
        try:
            return cls(
                name=meta["name"],
                text=TextHead(arrays),
                fine=FineLabels(arrays, meta["fine_labels"], meta["fine_words"]),
                context=ContextModel(arrays),
                meta=meta,
            )
        except KeyError as missing:
            raise TextHeadsMissingError(f"{path}: no array {missing}") from missing

    def read_text(self, embedding: Array) -> TextReading:
        """The words of one utterance alone: family probabilities and valence."""
        return _reading(*self.text.logits(embedding))

    def fine_labels(self, embedding: Array) -> dict[str, float]:
        """Score of every fine label (GoEmotions' 27 + neutral), 0..1."""
        return dict(zip(self.fine.labels, (float(s) for s in self.fine.scores(embedding)), strict=True))

    def conversation(self, max_speakers: int = 16) -> ConversationContext:
        """A new, empty conversation context for one call."""
        return ConversationContext(self, max_speakers=max_speakers)

    def read_history(self, history: Sequence[tuple[str, Array]]) -> TextReading:
        """The last utterance of `history` ((speaker, embedding) in order) read with all of it, from scratch.

        The reference `ConversationContext.add` is checked against; it costs one GRU step per utterance."""
        if not history:
            raise ValueError("an empty history has no last utterance")
        speaker = history[-1][0]
        state = np.zeros(self.context.hidden_size, dtype=np.float32)
        family_logits = valence_logits = np.zeros(0, dtype=np.float32)
        for who, embedding in history:
            family_logits, valence_logits = self.text.logits(embedding)
            gates = self.context.input_gates(self.text.standardise(embedding), family_logits)
            state = self.context.step(state, gates + self.context.weight_ih_flag if who == speaker else gates)
        return _reading(self.context.logits(state, family_logits), valence_logits)


def save_dialogue_heads(path: Path, meta: Mapping[str, Any], arrays: Mapping[str, npt.NDArray[Any]]) -> None:
    """Write the heads (arrays named as DialogueHeads.load reads them) and their meta to one .npz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stored = {key: np.asarray(value, dtype=np.float32) for key, value in arrays.items()}
    np.savez_compressed(path, meta=np.array(json.dumps(dict(meta))), **stored)  # type: ignore[arg-type]


def _reading(family_logits: Array, valence_logits: Array) -> TextReading:
    families = _softmax(family_logits)
    valence = _softmax(valence_logits)
    return TextReading(
        families={family: float(p) for family, p in zip(FAMILIES, families, strict=True)},
        valence=float(
            valence[VALENCE_CLASSES.index("positive")] - valence[VALENCE_CLASSES.index("negative")]
        ),
        family_logits=np.asarray(family_logits, dtype=np.float32),
    )


def _softmax(logits: Array) -> Array:
    e = np.exp(logits - logits.max())
    return (e / e.sum()).astype(np.float32)


def _sigmoid(x: Array) -> Array:
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)  # no overflow for large |x|
