"""Prosody of an utterance on synthesised tones, glides and espeak-ng speech."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from model.audio.prosody import SILENCE_DB, Prosody, SpeakerBaseline, measure_prosody

RATE = 16_000


def voice(f0_start: float, f0_end: float, seconds: float = 1.0, amplitude: float = 0.3) -> np.ndarray:
    """A buzzy vowel-like tone (5 harmonics) whose F0 glides exponentially from f0_start to f0_end."""
    t = np.arange(round(seconds * RATE)) / RATE
    f0 = f0_start * (f0_end / f0_start) ** (t / seconds)
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    tone = sum(np.sin(k * phase) / k for k in range(1, 6))
    return (amplitude * tone / np.abs(tone).max()).astype(np.float32)


def test_rising_glide_has_a_rising_slope() -> None:
    prosody = measure_prosody(voice(150, 250))
    assert prosody.f0_slope_st_per_s is not None
    assert prosody.f0_slope_st_per_s == pytest.approx(12 * np.log2(250 / 150), rel=0.1)  # 8.8 st/s


def test_falling_glide_has_a_falling_slope() -> None:
    prosody = measure_prosody(voice(250, 150))
    assert prosody.f0_slope_st_per_s is not None
    assert prosody.f0_slope_st_per_s < -7


def test_steady_tone_gives_its_pitch_and_no_slope() -> None:
    prosody = measure_prosody(voice(200, 200))
    assert prosody.f0_median_hz == pytest.approx(200, rel=0.02)
    assert prosody.f0_slope_st_per_s == pytest.approx(0, abs=0.5)
    assert prosody.f0_range_semitones == pytest.approx(0, abs=0.5)
    assert prosody.voiced_fraction > 0.9


def test_louder_signal_has_higher_energy() -> None:
    quiet, loud = (
        measure_prosody(voice(200, 200, amplitude=0.05)),
        measure_prosody(voice(200, 200, amplitude=0.5)),
    )
    assert loud.energy_db - quiet.energy_db == pytest.approx(20, abs=0.5)  # ten times the amplitude


def test_words_at_three_per_second_give_rate_three() -> None:
    words = [(i / 3, i / 3 + 0.3) for i in range(9)]  # 30 ms gaps: no pauses
    prosody = measure_prosody(voice(200, 200, seconds=3.0), words)
    assert prosody.speech_rate_wps == pytest.approx(3, rel=0.05)
    assert prosody.pause_count == 0


def test_gaps_longer_than_200_ms_count_as_pauses() -> None:
    words = [(0.0, 0.3), (0.35, 0.6), (1.1, 1.4), (1.45, 1.7), (2.0, 2.3)]  # gaps 0.05, 0.5, 0.05, 0.3
    prosody = measure_prosody(voice(200, 200, seconds=2.5), words)
    assert prosody.pause_count == 2
    assert prosody.pause_total_s == pytest.approx(0.8)


def test_levels_are_relative_to_the_speakers_baseline() -> None:
    baseline = SpeakerBaseline()
    for _ in range(3):
        baseline.update(measure_prosody(voice(150, 150, amplitude=0.1)))
    raised = measure_prosody(voice(300, 300, amplitude=0.2), baseline=baseline)
    assert raised.f0_rel_semitones == pytest.approx(12, abs=0.3)  # an octave up
    assert raised.energy_rel_db == pytest.approx(6, abs=0.5)  # twice the amplitude
    assert measure_prosody(voice(300, 300)).f0_rel_semitones is None  # no baseline, no relative level


def test_silence_has_no_pitch_and_the_silence_level() -> None:
    prosody = measure_prosody(np.zeros(RATE, dtype=np.float32))
    assert prosody.f0_median_hz is None and prosody.f0_slope_st_per_s is None and prosody.hnr_db is None
    assert prosody.energy_db == SILENCE_DB
    assert prosody.speech_rate_wps is None


def test_prosody_serialises_to_json() -> None:
    record = measure_prosody(voice(150, 250), [(0.0, 0.4), (0.5, 0.9)]).to_dict()
    assert set(record) == set(Prosody.__dataclass_fields__)
    json.dumps(record)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_synthesised_speech_has_a_plausible_voice() -> None:
    from tests.media import espeak

    prosody = measure_prosody(espeak("I really did not expect to see you here today, this is wonderful."))
    assert prosody.f0_median_hz is not None and 80 <= prosody.f0_median_hz <= 300
    assert 0.3 < prosody.voiced_fraction < 0.95
    assert prosody.f0_range_semitones is not None and prosody.f0_range_semitones > 1
    assert prosody.jitter_local is not None and 0 < prosody.jitter_local < 0.05
    assert prosody.shimmer_local is not None and 0 < prosody.shimmer_local < 0.3
    assert prosody.hnr_db is not None and 3 < prosody.hnr_db < 30
