"""Audio in the formats peers send reaches the VAD as 16 kHz mono at the right pitch and length."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest

from model.audio.vad import CHUNK_SAMPLES, SileroModel
from stream.speech.resample import Resampler

TONE_HZ = 440.0
DURATION_S = 2.0


def tone_frames(rate: int, layout: str, fmt: str) -> list[av.AudioFrame]:
    channels = 2 if layout == "stereo" else 1
    t = np.arange(round(rate * DURATION_S)) / rate
    wave = 0.5 * np.sin(2 * np.pi * TONE_HZ * t)
    frames, step = [], rate // 50
    for begin in range(0, len(wave), step):
        block = np.repeat(wave[begin : begin + step][None, :], channels, axis=0)
        if fmt == "s16":  # packed: channels interleaved in one plane, as aiortc delivers
            data = (block.T.reshape(1, -1) * 32767).astype(np.int16)
        else:  # planar float
            data = block.astype(np.float32)
        frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, begin, fractions.Fraction(1, rate)
        frames.append(frame)
    return frames


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


@pytest.fixture(scope="module")
def vad_model() -> SileroModel:
    return SileroModel()


@pytest.mark.parametrize(
    ("rate", "layout", "fmt"),
    [
        (48_000, "stereo", "s16"),
        (44_100, "mono", "s16"),
        (16_000, "mono", "fltp"),
        (48_000, "stereo", "fltp"),
    ],
)
def test_audio_reaches_vad_as_16k_mono_with_right_pitch_and_length(
    rate: int, layout: str, fmt: str, vad_model: SileroModel
) -> None:
    resampler, vad = Resampler(), vad_model.stream()
    scored = []
    for frame in tone_frames(rate, layout, fmt):
        for chunk in resampler.push(frame):
            scored += vad.push(chunk)
    assert all(len(c.samples) == CHUNK_SAMPLES for c, _ in scored)
    audio = np.concatenate([c.samples for c, _ in scored])
    assert len(audio) / 16_000 == pytest.approx(DURATION_S, abs=0.05)
    assert dominant_hz(audio, 16_000) == pytest.approx(TONE_HZ, abs=3)
    times = [c.t for c, _ in scored]
    assert np.allclose(np.diff(times), CHUNK_SAMPLES / 16_000)
    # libswresample downmixes identical stereo channels at -3 dB each (0.5 → 0.707): same loudness class
    assert 0.45 < float(np.max(np.abs(audio))) < 0.75


def test_gap_in_pts_is_filled_so_media_time_stays_true() -> None:
    resampler = Resampler()
    frames = tone_frames(48_000, "stereo", "s16")
    kept = frames[:25] + frames[50:]  # 0.5 s of frames lost after the first half second
    total = sum(len(c.samples) for f in kept for c in resampler.push(f))
    assert total / 16_000 == pytest.approx(DURATION_S, abs=0.05)


def test_silero_hears_speech_and_not_silence(vad_model: SileroModel) -> None:
    from tests.media import espeak

    voice = espeak("Hello there, this is a test of the voice detector.")
    stream = vad_model.stream()
    from stream.speech.resample import PcmChunk

    silence = [p for _, p in stream.push(PcmChunk(0.0, np.zeros(16_000, np.float32)))]
    speech = [p for _, p in stream.push(PcmChunk(1.0, voice))]
    assert max(silence) < 0.2
    assert np.mean(np.array(speech) > 0.5) > 0.5
