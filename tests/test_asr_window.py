"""Whisper's speech window (audio.asr.window: speech): the encoder reads the utterance's own length and the states
of a window of silence fill the rest, so the cost follows the speech while the words stay those of the 30 s
window."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.audio.whisper import (
    SPEECH_MIN_FRAMES,
    SPEECH_PAD_FRAMES,
    WINDOW_FRAMES,
    FasterWhisperTranscriber,
    speech_frames,
)
from stream.config import AsrSettings
from tests.media import SPEECH_RATE, espeak, librivox_reading, normalise, word_error_rate

SHORT = "Okay, that sounds good."
LONG = (
    "I have been thinking about the plan for the new clinic all week long, and I think we should open it in "
    "the spring, when the doctors are back."
)


def test_speech_frames_end_half_a_second_after_the_last_frame_that_is_not_padding() -> None:
    features = np.zeros((80, WINDOW_FRAMES), np.float32)
    features[:, :1301] = -0.5  # 13.01 s of speech, then faster-whisper's zero padding
    assert speech_frames(features) == 1301 + SPEECH_PAD_FRAMES + 1  # even: the encoder halves the frames
    features[3, 2000] = 0.2  # one band of one frame is enough to count as heard
    assert speech_frames(features) == 2000 + 1 + SPEECH_PAD_FRAMES + 1
    # short speech: at least 10 s is encoded, so the speech's states see silence after them as in a full window
    assert SPEECH_MIN_FRAMES == 1000
    assert speech_frames(np.full((80, WINDOW_FRAMES), 0.0, np.float32)) == SPEECH_MIN_FRAMES
    features[:, 301:] = 0.0
    assert speech_frames(features) == SPEECH_MIN_FRAMES
    assert speech_frames(np.ones((80, WINDOW_FRAMES), np.float32)) == WINDOW_FRAMES
    assert speech_frames(features[None]) == speech_frames(features)  # a batch of one, as faster-whisper sends


def encoder_spy(
    transcriber: FasterWhisperTranscriber, shapes: list[tuple[int, ...]] | None = None
) -> list[int]:
    """Records the frames of every window the encoder itself is given (and the whole shapes in `shapes`)."""
    seen: list[int] = []
    encode: Callable[[np.ndarray], Any] = transcriber._encode

    def spy(features: np.ndarray) -> Any:
        seen.append(features.shape[-1])
        if shapes is not None:
            shapes.append(features.shape)
        return encode(features)

    transcriber._encode = spy  # type: ignore[method-assign]
    return seen


@pytest.fixture(scope="module")
def transcribers() -> dict[str, FasterWhisperTranscriber]:
    return {w: FasterWhisperTranscriber(AsrSettings(window=w, cpu_threads=2)) for w in ("speech", "full")}


def test_the_encoder_reads_the_speech_not_the_30_s_window(
    transcribers: dict[str, FasterWhisperTranscriber],
) -> None:
    speech, full = transcribers["speech"], transcribers["full"]
    for text in (SHORT, LONG):
        pcm = espeak(text)
        frames = len(pcm) * 100 // SPEECH_RATE
        read_speech, read_full = encoder_spy(speech), encoder_spy(full)
        heard = speech.transcribe(pcm, t_offset=5.0)
        full.transcribe(pcm, t_offset=5.0)
        assert read_full == [WINDOW_FRAMES]
        assert len(read_speech) == 1 and read_speech[0] < WINDOW_FRAMES
        assert (
            max(frames, SPEECH_MIN_FRAMES)
            <= read_speech[0]
            <= max(frames + SPEECH_PAD_FRAMES + 2, SPEECH_MIN_FRAMES)
        )
        # the words, with their times inside the utterance, in order
        assert word_error_rate(normalise(text), normalise(heard.text)) <= 0.15, heard.text
        starts = [w.start for w in heard.words]
        assert starts == sorted(starts) and starts[0] >= 5.0
        assert heard.words[-1].end <= 5.0 + len(pcm) / SPEECH_RATE + 0.1
        # the voice head reads the states of this same encoding, and a second pass gives the same numbers
        assert heard.voice is not None
        assert np.allclose(heard.voice, speech.voice_states(pcm), atol=1e-4)
        assert not np.allclose(heard.voice, full.voice_states(pcm), atol=1e-4)  # it is another encoding


def test_real_read_speech_keeps_its_words(transcribers: dict[str, FasterWhisperTranscriber]) -> None:
    """LibriVox (pocketsphinx-testdata): two real utterances, transcribed one by one as the server would."""
    audio, said = librivox_reading(pause_s=0.0)
    heard = transcribers["speech"].transcribe(audio, t_offset=0.0)
    heard_full = transcribers["full"].transcribe(audio, t_offset=0.0)
    wer = word_error_rate(normalise(said), normalise(heard.text))
    assert wer <= 0.15, heard.text
    assert wer <= word_error_rate(normalise(said), normalise(heard_full.text)) + 0.05


def test_a_batch_is_encoded_in_one_pass_and_each_transcribed_as_alone(
    transcribers: dict[str, FasterWhisperTranscriber],
) -> None:
    texts = [
        "That is wonderful news, I love it.",
        LONG,
        "Please send me the report before the meeting tomorrow.",
    ]
    clips = [espeak(text) for text in texts]
    for window, transcriber in transcribers.items():
        alone = [transcriber.transcribe(pcm, t_offset=float(i)) for i, pcm in enumerate(clips)]
        shapes: list[tuple[int, ...]] = []
        encoder_spy(transcriber, shapes)
        together = transcriber.transcribe_batch([(pcm, float(i)) for i, pcm in enumerate(clips)])
        longest = max(len(pcm) for pcm in clips) * 100 // SPEECH_RATE
        assert len(shapes) == 1 and shapes[0][0] == 3, shapes  # one encoder pass for the three
        assert shapes[0][-1] == (WINDOW_FRAMES if window == "full" else speech_frames_after(longest))
        for text, one, batched, i in zip(texts, alone, together, range(3), strict=True):
            assert word_error_rate(normalise(text), normalise(batched.text)) <= 0.15, batched.text
            assert batched.words[0].start >= float(i) and batched.voice is not None and batched.seconds > 0
            if window == "full":  # the same window as alone: the same encoder states for the voice head
                assert np.allclose(batched.voice, one.voice, atol=1e-3)


def speech_frames_after(frames: int) -> int:
    pad = frames + SPEECH_PAD_FRAMES
    return max(SPEECH_MIN_FRAMES, pad + pad % 2)


def test_training_features_are_cached_per_encoder_window(tmp_path: Path) -> None:
    """The voice head must learn on the window the server encodes: a cache of one never serves the other."""
    from model.training.feature_cache import cache_key
    from model.training.voice_features import features_variant

    clip = tmp_path / "clip.wav"
    clip.write_bytes(b"RIFF")
    full, speech = (features_variant(AsrSettings(window=w)) for w in ("full", "speech"))
    assert cache_key(clip, full) == cache_key(clip)  # the caches written before the option stay valid
    assert cache_key(clip, speech) != cache_key(clip, full)
    assert speech == f"window=speech,min={SPEECH_MIN_FRAMES}"  # a cache made before the floor is not reused
