"""Streaming voice activity: silero VAD (ONNX, the weights shipped in its package) over 32 ms chunks."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

SAMPLE_RATE = 16_000
CHUNK_SAMPLES = 512  # 32 ms at 16 kHz, the window silero expects
_CONTEXT_SAMPLES = 64  # the model sees the last 64 samples of the previous chunk too


@dataclass(frozen=True, slots=True)
class PcmChunk:
    """Mono audio; `t` is the media time (s) of samples[0]."""

    t: float
    samples: np.ndarray  # (n,) float32 in [-1, 1], 16 kHz


def silero_model_path() -> Path:
    """The ONNX file inside the silero-vad package, found without importing it (which would import torch)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the silero-vad package is not installed")
    path = Path(spec.origin).parent / "data" / "silero_vad.onnx"
    if not path.exists():
        raise FileNotFoundError(f"silero VAD model not found at {path}")
    return path


class SileroModel:
    """One ONNX session shared by every participant; each stream keeps its own recurrent state."""

    def __init__(self, threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.path = silero_model_path()
        self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def stream(self) -> VadStream:
        return VadStream(self)

    def run(self, window: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        out, new_state = self._session.run(None, {"input": window[None, :], "state": state, "sr": self._sr})
        return float(out[0, 0]), new_state


class VadStream:
    """Speech probability per 512-sample chunk of one audio stream; re-chunks arbitrary PcmChunks."""

    def __init__(self, model: SileroModel) -> None:
        self._model = model
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(_CONTEXT_SAMPLES, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self._pending_t = 0.0

    def push(self, chunk: PcmChunk) -> list[tuple[PcmChunk, float]]:
        """Feed audio; returns each complete 32 ms chunk with its speech probability."""
        if len(self._pending) == 0:
            self._pending_t = chunk.t
        self._pending = np.concatenate([self._pending, chunk.samples])
        scored: list[tuple[PcmChunk, float]] = []
        while len(self._pending) >= CHUNK_SAMPLES:
            samples, self._pending = self._pending[:CHUNK_SAMPLES], self._pending[CHUNK_SAMPLES:]
            scored.append((PcmChunk(self._pending_t, samples), self._speech_prob(samples)))
            self._pending_t += CHUNK_SAMPLES / SAMPLE_RATE
        return scored

    def _speech_prob(self, samples: np.ndarray) -> float:
        window = np.concatenate([self._context, samples])
        prob, self._state = self._model.run(window, self._state)
        self._context = samples[-_CONTEXT_SAMPLES:]
        return prob
