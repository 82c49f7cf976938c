"""The emotion vocabulary: its table, its placement on valence/arousal, and ranking words for a state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.emotion.vocabulary import FAMILIES, EmotionVocabulary, SentenceEncoder
from model.training.build_vocabulary import AffectAnchors, build_vocabulary

# Words everyone places the same way on Russell's circumplex; none is an anchor of the projection.
PLEASANT_AROUSED = ("joyful", "excited")
PLEASANT_CALM = ("calm", "content", "relieved")
UNPLEASANT_AROUSED = ("furious", "terrified")
UNPLEASANT_CALM = ("sad", "bored", "depressed")


@pytest.fixture(scope="module")
def vocabulary() -> EmotionVocabulary:
    return EmotionVocabulary.load()


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder()  # MiniLM loads on first use, once for this module


def test_vocabulary_has_at_least_200_words(vocabulary: EmotionVocabulary) -> None:
    assert len(vocabulary) >= 200
    assert len(set(vocabulary.words)) == len(vocabulary)
    assert set(vocabulary.family) <= set(FAMILIES)
    assert vocabulary.embeddings.shape == (len(vocabulary), 384)
    assert np.all(np.abs(vocabulary.valence) <= 1) and np.all(np.abs(vocabulary.arousal) <= 1)


def test_checked_words_are_not_anchors() -> None:
    anchors = AffectAnchors.load()
    anchor_words = {
        *anchors.valence_positive,
        *anchors.valence_negative,
        *anchors.pleasant_high,
        *anchors.pleasant_low,
        *anchors.unpleasant_high,
        *anchors.unpleasant_low,
    }
    checked = {*PLEASANT_AROUSED, *PLEASANT_CALM, *UNPLEASANT_AROUSED, *UNPLEASANT_CALM}
    assert not checked & anchor_words


@pytest.mark.parametrize("word", PLEASANT_AROUSED)
def test_pleasant_aroused_words_are_positive_and_high(vocabulary: EmotionVocabulary, word: str) -> None:
    valence, arousal = vocabulary.affect_of(word)
    assert valence > 0 and arousal > 0


@pytest.mark.parametrize("word", PLEASANT_CALM)
def test_pleasant_calm_words_are_positive_and_lower(vocabulary: EmotionVocabulary, word: str) -> None:
    valence, arousal = vocabulary.affect_of(word)
    assert valence > 0 and arousal < 0
    assert arousal < min(vocabulary.affect_of(w)[1] for w in PLEASANT_AROUSED)


@pytest.mark.parametrize("word", UNPLEASANT_AROUSED)
def test_unpleasant_aroused_words_are_negative_and_high(vocabulary: EmotionVocabulary, word: str) -> None:
    valence, arousal = vocabulary.affect_of(word)
    assert valence < 0 and arousal > 0


@pytest.mark.parametrize("word", UNPLEASANT_CALM)
def test_unpleasant_calm_words_are_negative_and_low(vocabulary: EmotionVocabulary, word: str) -> None:
    valence, arousal = vocabulary.affect_of(word)
    assert valence < 0 and arousal < 0


def test_basic_emotion_words_are_in_their_family(vocabulary: EmotionVocabulary) -> None:
    expected = {"angry": "anger", "disgusted": "disgust", "scared": "fear", "happy": "happiness"}
    expected |= {"sad": "sadness", "surprised": "surprise", "neutral": "neutral"}
    assert {w: vocabulary.family[vocabulary.words.index(w)] for w in expected} == expected


def test_synonyms_map_to_their_canonical_word(vocabulary: EmotionVocabulary) -> None:
    assert vocabulary.canonical("glad") == "happy"
    assert vocabulary.canonical(" Livid ") == "furious"
    assert vocabulary.canonical("furious") == "furious"
    assert vocabulary.canonical("flummoxed") == "flummoxed"  # not in the vocabulary: itself


def test_happy_state_ranks_pleasant_words_first(vocabulary: EmotionVocabulary) -> None:
    ranked = vocabulary.rank(0.7, 0.4, {"happy": 0.9, "neutral": 0.1}, top_k=10)
    assert len(ranked) == 10
    assert all(vocabulary.affect_of(word)[0] > 0.3 for word, _ in ranked)
    assert [score for _, score in ranked] == sorted((score for _, score in ranked), reverse=True)


def test_angry_state_ranks_angry_words_first(vocabulary: EmotionVocabulary) -> None:
    ranked = vocabulary.rank(-0.6, 0.5, {"anger": 0.8, "neutral": 0.2}, top_k=5)
    assert all(vocabulary.family[vocabulary.words.index(word)] == "anger" for word, _ in ranked)


def test_ranking_returns_one_word_per_synonym_group(vocabulary: EmotionVocabulary) -> None:
    ranked = vocabulary.rank(0.7, 0.4, top_k=20)
    canonicals = [vocabulary.canonical(word) for word, _ in ranked]
    assert len(set(canonicals)) == len(canonicals)


def test_unknown_family_is_refused(vocabulary: EmotionVocabulary) -> None:
    with pytest.raises(ValueError, match="contempt"):
        vocabulary.rank(0.0, 0.0, {"contempt": 1.0})


def test_missing_table_names_its_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        EmotionVocabulary.load(tmp_path)


def test_missing_encoder_model_names_its_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "minilm")):
        SentenceEncoder(tmp_path / "minilm").embed(["hello"])


def test_encoder_gives_unit_vectors_in_batches(encoder: SentenceEncoder) -> None:
    sentences = ["I miss the old days.", "Thank you so much!", "Please send me the report."]
    batch = encoder.embed(sentences)
    assert batch.shape == (3, 384) and batch.dtype == np.float32
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    assert np.allclose(batch[1], encoder.embed_one(sentences[1]), atol=1e-4)


def test_transcript_pulls_ranking_towards_its_words(
    vocabulary: EmotionVocabulary, encoder: SentenceEncoder
) -> None:
    text = encoder.embed_one("I miss the old days when we were young.")
    ranked = [word for word, _ in vocabulary.rank(0.0, -0.2, None, text, top_k=3)]
    assert "nostalgic" in ranked
    assert "nostalgic" not in [word for word, _ in vocabulary.rank(0.0, -0.2, None, None, top_k=3)]


@pytest.mark.slow
def test_build_script_reproduces_the_shipped_table(
    vocabulary: EmotionVocabulary, encoder: SentenceEncoder
) -> None:
    rebuilt = build_vocabulary(encoder, AffectAnchors.load())
    assert rebuilt.words == vocabulary.words and rebuilt.canonicals == vocabulary.canonicals
    assert np.allclose(rebuilt.valence, vocabulary.valence, atol=0.01)
    assert np.allclose(rebuilt.arousal, vocabulary.arousal, atol=0.01)
    assert (
        sum(a != b for a, b in zip(rebuilt.family, vocabulary.family, strict=True)) <= len(vocabulary) // 100
    )
    cosine = np.sum(rebuilt.embeddings * vocabulary.embeddings, axis=1)
    assert cosine.min() > 0.999  # the shipped embeddings are float16
