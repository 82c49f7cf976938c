"""Speech (16 kHz float32) → text alone, at a cost that grows with the audio: Moonshine tiny (English), for the
interim transcripts of speech still going on (Whisper, model/audio/whisper.py, still makes the final ones).

The model files ship in the `moonshine-voice` wheel (MIT, tiny-en .ort; it would load its own native runtime) and
the tokenizer in `useful-moonshine-onnx` (MIT; it declares librosa and numba); both are installed --no-deps and
never imported. The greedy decoding loop is the one in useful-moonshine-onnx's model.py, here on this
environment's onnxruntime with the threads we choose. Moonshine's encoder takes the audio at its own length (no 30 s
window), about 19 ms of CPU per second of audio here, against ~0.55 s for any Whisper tiny.en pass.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from model.audio.vad import SAMPLE_RATE
from model.audio.whisper import AsrModelMissing, Transcriber, Transcript
from model.settings import AsrSettings

# decoding stops at this many tokens: speech runs at 3-4 a second; a loop on a word cut in half stops here
TOKENS_PER_S = 6
MIN_TOKENS = 8


def package_dir(package: str, distribution: str) -> Path:
    """Where an installed package's files are, found without importing it."""
    spec = importlib.util.find_spec(package)
    locations = None if spec is None else spec.submodule_search_locations
    if not locations:
        raise AsrModelMissing(
            f"audio.asr.interim_backend moonshine: {distribution} is not installed; install it with "
            f"`pip install --no-deps {distribution}` (Makefile)"
        )
    return Path(locations[0])


def model_files() -> tuple[Path, Path]:
    """(tiny-en model folder, tokenizer.json)."""
    folder = package_dir("moonshine_voice", "moonshine-voice==0.1.0") / "assets" / "tiny-en"
    if not (folder / "encoder_model.ort").is_file() or not (folder / "decoder_model_merged.ort").is_file():
        raise AsrModelMissing(
            f"audio.asr.interim_backend moonshine: no tiny-en model in {folder} (need ==0.1.0)"
        )
    tokenizer = package_dir("moonshine_onnx", "useful-moonshine-onnx==20251121") / "assets" / "tokenizer.json"
    if not tokenizer.is_file():
        raise AsrModelMissing(f"audio.asr.interim_backend moonshine: no tokenizer at {tokenizer}")
    return folder, tokenizer


class _Tiny:
    """Moonshine tiny's encoder and merged decoder (with its KV cache) on onnxruntime: greedy decoding, as
    useful-moonshine-onnx's MoonshineOnnxModel.generate does it (its constructor would pick every core)."""

    LAYERS, KV_HEADS, HEAD_DIM = 6, 8, 36
    START, END = 1, 2  # token ids

    def __init__(self, folder: Path, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.encoder = onnxruntime.InferenceSession(str(folder / "encoder_model.ort"), options)
        self.decoder = onnxruntime.InferenceSession(str(folder / "decoder_model_merged.ort"), options)
        self._encoder_inputs = {x.name for x in self.encoder.get_inputs()}
        self._decoder_inputs = {x.name for x in self.decoder.get_inputs()}

    def generate(self, audio: np.ndarray, max_tokens: int) -> tuple[list[int], int]:
        """audio: (1, n) float32 → (token ids, encoder frames)."""
        mask = np.ones_like(audio, dtype=np.int64)
        inputs: dict[str, np.ndarray] = {"input_values": audio}
        if "attention_mask" in self._encoder_inputs:
            inputs["attention_mask"] = mask
        states = self.encoder.run(None, inputs)[0]
        cache: dict[str, np.ndarray] = {
            f"past_key_values.{i}.{part}.{kv}": np.zeros((0, self.KV_HEADS, 1, self.HEAD_DIM), np.float32)
            for i in range(self.LAYERS)
            for part in ("decoder", "encoder")
            for kv in ("key", "value")
        }
        tokens = [self.START]
        for step in range(max_tokens):
            feeds: dict[str, Any] = {
                "input_ids": np.array([tokens[-1:] if step else tokens], np.int64),
                "encoder_hidden_states": states,
                "use_cache_branch": np.array([step > 0]),
                **cache,
            }
            if "encoder_attention_mask" in self._decoder_inputs:
                feeds["encoder_attention_mask"] = mask
            logits, *present = self.decoder.run(None, feeds)
            token = int(logits[0, -1].argmax())
            tokens.append(token)
            if token == self.END:
                break
            for name, value in zip(cache, present, strict=True):
                if step == 0 or ".decoder." in name:  # the encoder's keys and values are computed once
                    cache[name] = value
        return tokens, int(states.shape[1])


class MoonshineTranscriber:
    """Moonshine tiny English: text only (no word times, no Whisper encoder states for the voice head)."""

    name = "moonshine:tiny-en"

    def __init__(self, threads: int = 1) -> None:
        import tokenizers

        folder, tokenizer = model_files()
        self._seen = threading.local()  # the last transcription's work, per worker thread
        self._model = _Tiny(folder, threads)
        self._tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer))

    def transcribe(self, pcm: np.ndarray, t_offset: float, words: bool = True) -> Transcript:
        """Word times are not known: `words` is ignored and Transcript.words is always empty."""
        started = time.perf_counter()
        text, self._seen.frames, self._seen.tokens = "", 0, 0
        if len(pcm) >= SAMPLE_RATE // 10:  # the encoder's convolutions need some audio
            audio = np.ascontiguousarray(pcm, np.float32)[None, :]
            max_len = MIN_TOKENS + round(TOKENS_PER_S * len(pcm) / SAMPLE_RATE)
            tokens, self._seen.frames = self._model.generate(audio, max_len)
            self._seen.tokens = len(tokens)
            text = self._tokenizer.decode(tokens, skip_special_tokens=True).strip()
        return Transcript(text=text, words=(), lang="en", seconds=time.perf_counter() - started)

    def last_work(self) -> tuple[int, int]:
        """(encoder frames, tokens decoded) of this thread's last transcription: what its cost follows."""
        return getattr(self._seen, "frames", 0), getattr(self._seen, "tokens", 0)


def make_interim_transcriber(settings: AsrSettings) -> Transcriber | None:
    """The transcriber of interim transcripts named by audio.asr.interim_backend; None: the final one's own."""
    if settings.interim_backend == "same":
        return None
    if settings.interim_backend == "moonshine":
        return MoonshineTranscriber(settings.interim_threads)
    raise ValueError(
        f"audio.asr.interim_backend: unknown backend {settings.interim_backend!r}; expected 'moonshine' or 'same'"
    )
