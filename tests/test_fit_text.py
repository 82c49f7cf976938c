"""Training of the text heads on a small synthetic corpus: deterministic, and the numpy runtime agrees with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.emotion.dialogue import DialogueHeads, save_dialogue_heads
from model.emotion.vocabulary import FAMILIES
from model.training import fit_text
from model.training.dialogue_corpora import GOEMOTIONS_LABELS, GOEMOTIONS_WORDS, DialogueLine

GO_FAMILY_LABEL = {"happiness": "joy", "sadness": "sadness", "anger": "anger", "neutral": "neutral"}


def synthetic_corpus(seed: int = 0) -> fit_text.Corpus:
    """Dialogues whose lines point (noisily) towards their family's direction; GoEmotions-like comments."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(len(FAMILIES), 384))
    lines, vectors = [], []
    for dataset, split, count in (("meld", "train", 30), ("emorynlp", "train", 10), ("meld", "dev", 8)):
        for d in range(count):
            for turn in range(int(rng.integers(2, 7))):
                family = ("happiness", "sadness", "anger", "neutral")[int(rng.integers(4))]
                lines.append(
                    DialogueLine(
                        text=f"{dataset} {split} {d} {turn}",
                        family=family,
                        labels=(family,),
                        dataset=dataset,
                        split=split,
                        dialogue=f"{dataset}-{split}-{d}",
                        turn=turn,
                        speaker="ab"[turn % 2],
                        valence=None,
                    )
                )
                vectors.append(directions[FAMILIES.index(family)] + rng.normal(size=384))
    for split, count in (("train", 200), ("dev", 60), ("test", 60)):
        for i in range(count):
            family = ("happiness", "sadness", "anger", "neutral")[i % 4]
            label = GO_FAMILY_LABEL[family]
            lines.append(
                DialogueLine(f"go {split} {i}", family, (label,), "goemotions", split, families=(family,))
            )
            vectors.append(directions[FAMILIES.index(family)] + rng.normal(size=384))
    x = np.array(vectors, dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return fit_text.Corpus(lines, x, x.copy())


def small_fit(corpus: fit_text.Corpus) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    return fit_text.fit(
        corpus,
        fit_text.TextConfig(hidden=32, epochs=3),
        fit_text.ContextConfig(hidden=8, epochs=3, folds=2),
        fit_text.FineConfig(epochs=3),
    )


def test_training_is_deterministic() -> None:
    first, _ = small_fit(synthetic_corpus())
    second, _ = small_fit(synthetic_corpus())
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


def test_numpy_runtime_reads_dialogues_as_training_scored_them(tmp_path: Path) -> None:
    corpus = synthetic_corpus()
    arrays, report = small_fit(corpus)
    meta = {
        "name": "text/test",
        "families": list(FAMILIES),
        "fine_labels": list(GOEMOTIONS_LABELS),
        "fine_words": GOEMOTIONS_WORDS,
    }
    save_dialogue_heads(tmp_path / "text.npz", meta, arrays)
    heads = DialogueHeads.load(tmp_path / "text.npz")
    dev = corpus.rows("meld", "dev")
    scores = fit_text.runtime_scores(heads, [corpus.lines[i] for i in dev], corpus.plain[dev])
    trials = report["context_trials"]
    assert isinstance(trials, list)
    assert scores["with_context"]["weighted_f1"] == pytest.approx(max(trials[0]["dev_curve"]), abs=1e-4)
    assert scores["text_only"]["weighted_f1"] > 0.5  # the synthetic families are easy to read
