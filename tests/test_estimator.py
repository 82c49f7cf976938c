"""Clues → labels: the fast estimator on constructed clues, with the real vocabulary, MiniLM and VADER."""

from __future__ import annotations

import numpy as np
import pytest

from model.audio.prosody import Prosody
from model.emotion.clues import (
    AudioClues,
    ClueExtractor,
    Clues,
    UtteranceInput,
    VisualClues,
)
from model.emotion.estimator import FastEstimator
from model.emotion.vocabulary import EmotionVocabulary, SentenceEncoder
from model.face.micro import FaceWindow, MicroEpisode


@pytest.fixture(scope="module")
def extractor() -> ClueExtractor:
    return ClueExtractor(None, SentenceEncoder())


@pytest.fixture(scope="module")
def estimator() -> FastEstimator:
    return FastEstimator(EmotionVocabulary.load())


def prosody(slope: float, energy_rel_db: float = 0.0, f0_rel: float = 0.0) -> Prosody:
    return Prosody(
        duration_s=2.0,
        voiced_fraction=0.6,
        f0_median_hz=180.0,
        f0_rel_semitones=f0_rel,
        f0_range_semitones=6.0,
        f0_slope_st_per_s=slope,
        energy_db=-20.0,
        energy_rel_db=energy_rel_db,
        energy_range_db=20.0,
        jitter_local=0.01,
        shimmer_local=0.05,
        hnr_db=15.0,
        speech_rate_wps=3.0,
        pause_count=0,
        pause_total_s=0.0,
    )


def face(region: str, onset: float, offset: float, peak: float, **more: float) -> VisualClues:
    kind = "micro" if offset - onset < 0.5 else "macro"
    episode = MicroEpisode(region, onset, (onset + offset) / 2, offset, peak, kind)
    return VisualClues(
        present=1.0, episodes=(episode,), blinks=0, action_units={region: peak, **more}, expression=None
    )


def test_smile_rising_pitch_and_praise_rank_positive_labels_first(extractor, estimator) -> None:
    clues = Clues(
        "u1",
        0.0,
        3.0,
        extractor.text_clues("That's wonderful!"),
        face("lip_corner_pull", 1.0, 2.5, 0.6, cheek_raise=0.3),
        AudioClues(prosody(slope=8.0, energy_rel_db=4.0, f0_rel=2.0)),
    )
    estimate = estimator.estimate(clues)
    vocabulary = estimator.vocabulary
    top = [label for label, _ in estimate.labels[:3]]
    assert all(vocabulary.affect_of(label)[0] > 0.3 for label in top), estimate.labels
    assert estimate.valence > 0.4
    assert abs(sum(score for _, score in estimate.labels) - 1) < 1e-3
    assert "smile 1.00–2.50 s (macro)" in estimate.explanation
    assert "rising pitch" in estimate.explanation
    assert "That's wonderful!" in estimate.explanation


def test_lowered_brows_and_reproach_rank_anger_labels_high(extractor, estimator) -> None:
    clues = Clues(
        "u2",
        0.0,
        2.0,
        extractor.text_clues("I can't believe you did that."),
        face("brow_lower", 0.5, 1.9, 0.5, eye_tighten=0.2),
        AudioClues(prosody(slope=-6.0, energy_rel_db=5.0)),
    )
    estimate = estimator.estimate(clues)
    families = [
        estimator.vocabulary.family[estimator.vocabulary.words.index(label)] for label, _ in estimate.labels
    ]
    assert families[0] == "anger", estimate.labels
    assert families[:3].count("anger") >= 2
    assert estimate.valence < 0 and estimate.arousal > 0.2


def test_brief_micro_expression_is_cited_with_its_times(extractor, estimator) -> None:
    clues = Clues(
        "u3",
        0.0,
        2.0,
        extractor.text_clues("Sure, whatever you say."),
        face("brow_inner_raise", 1.02, 1.24, 0.4),
        None,
    )
    assert "inner brow raise 1.02–1.24 s (micro)" in estimator.estimate(clues).explanation


def test_absent_modalities_are_reported_absent_not_imputed(extractor) -> None:
    utterance = UtteranceInput(
        utterance="u4",
        t0=0.0,
        t1=1.0,
        text="",
        words=(),
        pcm=np.zeros(16_000, np.float32),  # silence: no voice to read
        face=FaceWindow(0.0, 1.0, present=0.0, track=None, regions={}, episodes=[], blinks=0),  # nobody seen
    )
    clues = extractor.extract(utterance)
    assert clues.to_event() == {"text": None, "visual": None, "audio": None}


def test_no_clue_at_all_gives_a_neutral_reading_that_says_so(estimator) -> None:
    estimate = estimator.estimate(Clues("u5", 0.0, 1.0, None, None, None))
    assert estimate.valence == 0 and estimate.arousal == 0
    assert "no clear clue" in estimate.explanation


def test_a_named_emotion_is_taken_at_its_word(extractor, estimator) -> None:
    estimate = estimator.estimate(
        Clues("u6", 0.0, 2.0, extractor.text_clues("I am really worried about the results."), None, None)
    )
    assert "worried" in [label for label, _ in estimate.labels[:2]]
