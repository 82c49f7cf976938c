"""MiniLM sentence embeddings of corpus texts, computed once and kept in a cache file outside the repository."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from model.emotion.vocabulary import SentenceEncoder

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path("/work/data/cache/minilm_texts.npz")


class EmbeddingCache:
    """Text → L2-normalised embedding (float32), filled on demand and saved as .npz (`texts`, `vectors`)."""

    def __init__(self, path: Path = DEFAULT_CACHE, encoder: SentenceEncoder | None = None) -> None:
        self.path = Path(path)
        self.encoder = encoder or SentenceEncoder(batch_size=128)
        self._index: dict[str, int] = {}
        self._vectors: list[npt.NDArray[np.float32]] = []
        if self.path.is_file():
            with np.load(self.path, allow_pickle=False) as stored:
                texts, vectors = stored["texts"], stored["vectors"]
            self._index = {str(t): i for i, t in enumerate(texts)}
            self._vectors = list(vectors.astype(np.float32))

    def __len__(self) -> int:
        return len(self._index)

    def embed(self, texts: Sequence[str], chunk: int = 4096) -> npt.NDArray[np.float32]:
        """(len(texts), dim) embeddings; the ones not cached yet are computed (in chunks, saved after each)."""
        missing = sorted({t for t in texts if t not in self._index}, key=len)
        for start in range(0, len(missing), chunk):
            batch = missing[start : start + chunk]
            began = time.perf_counter()
            vectors = self.encoder.embed(batch)
            for text, vector in zip(batch, vectors, strict=True):
                self._index[text] = len(self._vectors)
                self._vectors.append(vector)
            self.save()
            log.info(
                "embedded %d/%d texts (%.1f ms each)",
                start + len(batch),
                len(missing),
                1000 * (time.perf_counter() - began) / len(batch),
            )
        return np.stack([self._vectors[self._index[t]] for t in texts]).astype(np.float32)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        texts = np.array(sorted(self._index, key=self._index.__getitem__))
        partial = self.path.with_suffix(".partial.npz")
        np.savez(partial, texts=texts, vectors=np.stack(self._vectors))
        partial.replace(self.path)
