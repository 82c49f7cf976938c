"""Speech (16 kHz float32) → text alone, at a cost that grows with the audio: Moonshine tiny (English), for the
interim transcripts of speech still going on (Whisper, model/audio/whisper.py, still makes the final ones).

The model files ship in the `moonshine-voice` wheel (MIT, tiny-en .ort; installed --no-deps, never imported: it
loads its own native library) and the tokenizer and greedy decoding loop in `useful-moonshine-onnx` (MIT), run on
this environment's onnxruntime with one thread. Moonshine's encoder takes the audio at its own length (no 30 s
window), about 19 ms of CPU per second of audio here, against ~0.55 s for any Whisper tiny.en pass.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model.audio.vad import SAMPLE_RATE
from model.audio.whisper import AsrModelMissing, Transcriber, Transcript
from model.settings import AsrSettings

if TYPE_CHECKING:
    from moonshine_onnx.model import MoonshineOnnxModel

# tiny: 6 decoder layers, 8 KV heads of 36 (moonshine_onnx.model); speech runs at 3-4 tokens a second
TOKENS_PER_S = 6
MIN_TOKENS = 8


def model_dir() -> Path:
    """moonshine-voice's tiny-en folder, found without importing the package."""
    spec = importlib.util.find_spec("moonshine_voice")
    locations = None if spec is None else spec.submodule_search_locations
    if not locations:
        raise AsrModelMissing(
            "audio.asr.interim_backend moonshine: the moonshine-voice package (==0.1.0, which ships tiny-en) "
            "is not installed; install it with pip --no-deps (Makefile)"
        )
    folder = Path(locations[0]) / "assets" / "tiny-en"
    if not (folder / "encoder_model.ort").is_file() or not (folder / "decoder_model_merged.ort").is_file():
        raise AsrModelMissing(
            f"audio.asr.interim_backend moonshine: no tiny-en model in {folder} (need ==0.1.0)"
        )
    return folder


class _CountedSession:
    """An onnxruntime session that notes, per thread, how many frames its last output had (the work done)."""

    def __init__(self, session: Any, seen: threading.local) -> None:
        self._session, self._seen = session, seen

    def get_inputs(self) -> Any:
        return self._session.get_inputs()

    def run(self, names: Any, feeds: dict[str, Any]) -> list[np.ndarray]:
        outputs: list[np.ndarray] = self._session.run(names, feeds)
        self._seen.frames = outputs[0].shape[1]
        return outputs


def _load_model(folder: Path, threads: int, seen: threading.local) -> MoonshineOnnxModel:
    import onnxruntime
    from moonshine_onnx.model import MoonshineOnnxModel

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1

    class Tiny(MoonshineOnnxModel):  # type: ignore[misc]
        """The library's decoding loop on our own sessions (its constructor picks every core)."""

        def __init__(self) -> None:
            encoder = onnxruntime.InferenceSession(str(folder / "encoder_model.ort"), options)
            self.encoder = _CountedSession(encoder, seen)
            self.decoder = onnxruntime.InferenceSession(str(folder / "decoder_model_merged.ort"), options)
            self.encoder_input_names = [x.name for x in self.encoder.get_inputs()]
            self.decoder_input_names = [x.name for x in self.decoder.get_inputs()]
            self.num_layers, self.num_key_value_heads, self.head_dim = 6, 8, 36
            self.decoder_start_token_id, self.eos_token_id = 1, 2

    return Tiny()


class MoonshineTranscriber:
    """Moonshine tiny English: text only (no word times, no Whisper encoder states for the voice head)."""

    name = "moonshine:tiny-en"

    def __init__(self, threads: int = 1) -> None:
        import moonshine_onnx
        import tokenizers

        self._seen = threading.local()
        self._model = _load_model(model_dir(), threads, self._seen)
        self._tokenizer = tokenizers.Tokenizer.from_file(str(moonshine_onnx.ASSETS_DIR / "tokenizer.json"))

    def transcribe(self, pcm: np.ndarray, t_offset: float, words: bool = True) -> Transcript:
        """Word times are not known: `words` is ignored and Transcript.words is always empty."""
        started = time.perf_counter()
        text = ""
        if len(pcm) >= SAMPLE_RATE // 10:  # the encoder's convolutions need some audio
            audio = np.ascontiguousarray(pcm, np.float32)[None, :]
            max_len = MIN_TOKENS + round(TOKENS_PER_S * len(pcm) / SAMPLE_RATE)
            tokens = self._model.generate(audio, max_len=max_len)
            self._seen.tokens = len(tokens[0])
            text = self._tokenizer.decode_batch(tokens, skip_special_tokens=True)[0].strip()
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
