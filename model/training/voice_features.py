"""Labelled clips → what the emotion heads read, computed by the live stages (for `microemo train-heads`).

Each clip's audio goes through the same VAD and segmenter as a call, so the heads learn on the utterances the
server would cut (speech with its padding, not the clip's silences); each utterance's Whisper encoder states
come from the same model the transcription runs, and its prosody from the same measure. Features are cached
per clip (keyed by path, size, mtime and the encoder window) in one .npz, so a second run over the same corpus is quick.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from model.audio.prosody import measure_prosody
from model.audio.segmenter import ClosedUtterance, Segmenter
from model.audio.vad import PcmChunk, SileroModel
from model.audio.whisper import SPEECH_MIN_FRAMES, FasterWhisperTranscriber
from model.emotion.heads import voice_features
from model.settings import AsrSettings, VadSettings
from model.training.feature_cache import cache_key, save_arrays

log = logging.getLogger(__name__)
SAMPLE_RATE = 16_000
SAVE_EVERY = 200  # clips computed between cache writes


@dataclass(frozen=True, slots=True)
class ClipVoice:
    """The voice features of each utterance the VAD found in one clip: (U, F) float32, U may be 0."""

    clip: Path
    features: npt.NDArray[np.float32]


def features_variant(asr: AsrSettings) -> str:
    """What the cached features of a clip depend on besides the clip: the encoder window and, for the speech window,
    its floor (the full window's features came first, so their keys have no variant)."""
    return "" if asr.window == "full" else f"window={asr.window},min={SPEECH_MIN_FRAMES}"


class VoiceFeatureExtractor:
    """The live VAD, segmenter and Whisper encoder over clips; the models load at their first use, so a run whose
    features are all cached loads none."""

    def __init__(self, vad: VadSettings | None = None, asr: AsrSettings | None = None) -> None:
        self._vad_settings = vad or VadSettings()
        self._asr = asr or AsrSettings()
        self.variant = features_variant(self._asr)

    @cached_property
    def _vad(self) -> SileroModel:
        return SileroModel(threads=1)

    @cached_property
    def _transcriber(self) -> FasterWhisperTranscriber:
        return FasterWhisperTranscriber(self._asr)

    def utterances(self, pcm: npt.NDArray[np.float32]) -> list[ClosedUtterance]:
        """The utterances a live call would close from this audio (the end of the clip closes the last)."""
        segmenter = Segmenter(self._vad_settings)
        stream = self._vad.stream()
        events = []
        for scored, prob in stream.push(PcmChunk(0.0, pcm)):
            events += segmenter.push(scored.t, scored.samples, prob)
        events += segmenter.flush()
        return [e for e in events if isinstance(e, ClosedUtterance)]

    def voice_states(self, pcm: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return self._transcriber.voice_states(pcm)

    @property
    def transcriber(self) -> FasterWhisperTranscriber:
        return self._transcriber

    def clip(self, path: Path) -> ClipVoice:
        pcm = _decode(path)
        rows = [
            voice_features(self.voice_states(u.pcm), measure_prosody(u.pcm)) for u in self.utterances(pcm)
        ]
        return ClipVoice(path, np.stack(rows) if rows else np.zeros((0, self.dimension), np.float32))

    @cached_property
    def dimension(self) -> int:
        silence = np.zeros(SAMPLE_RATE, np.float32)
        return len(voice_features(self._transcriber.voice_states(silence), measure_prosody(silence)))


def _variant(extractor: VoiceFeatureExtractor | None) -> str:
    """The cache variant of `extractor`'s features, or of the default extractor's that would be made."""
    return extractor.variant if extractor is not None else features_variant(AsrSettings())


def extract_voice(
    clips: Sequence[Path], cache: Path, extractor: VoiceFeatureExtractor | None = None
) -> list[ClipVoice]:
    """Voice features of every clip, from the cache where a clip is unchanged; the cache is rewritten."""
    stored: dict[str, npt.NDArray[np.float32]] = {}
    variant = _variant(extractor)
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as data:
            stored = {key: data[key] for key in data.files}
    result, fresh = [], 0
    for path in tqdm(clips, desc="voice features", unit="clip", disable=None):
        key = cache_key(path, variant)
        if key not in stored:
            extractor = extractor or VoiceFeatureExtractor()
            stored[key] = extractor.clip(path).features
            fresh += 1
            if fresh % SAVE_EVERY == 0:  # an interrupted run keeps most of its work
                save_arrays(cache, stored)
        result.append(ClipVoice(path, stored[key]))
    if fresh:
        save_arrays(cache, stored)
    log.info(
        "voice features: %d clips, %d computed, %d from %s", len(clips), fresh, len(clips) - fresh, cache
    )
    return result


@dataclass(frozen=True, slots=True)
class Heard:
    """What Whisper heard in one utterance, and how sure it was (`Transcript.heard`; None: no tokens)."""

    text: str
    sure: float | None


def extract_transcripts(
    clips: Sequence[Path], cache: Path, extractor: VoiceFeatureExtractor | None = None
) -> list[list[Heard]]:
    """What Whisper hears in each utterance the VAD cuts from each clip (as a live call transcribes it), and how
    sure it was, from the cache (JSON, keyed as the voice features) where a clip is unchanged; the cache is
    rewritten. An entry of an older cache (the text alone) is heard again."""
    stored: dict[str, list[dict[str, Any]]] = json.loads(cache.read_text()) if cache.is_file() else {}
    variant = _variant(extractor)
    result, fresh = [], 0
    for path in tqdm(clips, desc="transcripts", unit="clip", disable=None):
        key = cache_key(path, variant)
        if not all(isinstance(entry, dict) for entry in stored.get(key, [None])):
            extractor = extractor or VoiceFeatureExtractor()
            pcm = _decode(path)
            transcriber = extractor.transcriber
            transcripts = [transcriber.transcribe(u.pcm, 0.0, words=False) for u in extractor.utterances(pcm)]
            stored[key] = [{"text": t.text, "sure": t.heard} for t in transcripts]
            fresh += 1
            if fresh % SAVE_EVERY == 0:
                _save_json(cache, stored)
        result.append([Heard(entry["text"], entry["sure"]) for entry in stored[key]])
    if fresh:
        _save_json(cache, stored)
    return result


def _decode(path: Path) -> npt.NDArray[np.float32]:
    from faster_whisper.audio import decode_audio

    return decode_audio(str(path), sampling_rate=SAMPLE_RATE).astype(np.float32)


def _save_json(cache: Path, stored: dict[str, list[dict[str, Any]]]) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.stem + ".partial.json")
    tmp.write_text(json.dumps(stored))
    tmp.replace(cache)
