"""Text clues of a transcript: VADER valence and lexical cues of stance."""

from __future__ import annotations

from model.emotion.text_affect import analyse_text


def test_praise_is_positive() -> None:
    assert analyse_text("That's wonderful!").valence > 0.5


def test_complaint_is_negative() -> None:
    assert analyse_text("This is absolutely terrible!!").valence < -0.5


def test_disbelief_without_affect_words_reads_neutral() -> None:
    # VADER has no entry for "can't believe": it cannot tell outrage from delight; the other clues must.
    affect = analyse_text("I can't believe you did that")
    assert affect.valence == 0.0
    assert affect.negations == ("can't",)


def test_hedges_negations_and_intensifiers_are_found() -> None:
    affect = analyse_text("I guess it's kind of okay, not really great.")
    assert affect.hedges == ("i guess", "kind of")
    assert affect.negations == ("not",)
    assert affect.intensifiers == ("really",)


def test_curly_apostrophes_count_as_straight_ones() -> None:
    assert analyse_text("I don\u2019t know").hedges == ("i don't know",)


def test_punctuation_is_counted() -> None:
    affect = analyse_text("Really? You did? Wow!")
    assert (affect.questions, affect.exclamations) == (2, 1)


def test_empty_transcript_has_no_clues() -> None:
    affect = analyse_text("")
    assert affect.valence == 0.0 and affect.word_count == 0
    assert not (affect.negations or affect.hedges or affect.intensifiers)
