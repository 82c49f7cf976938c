"""The shipped text heads: words read as a user would expect, and a conversation context that stays cheap."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from model.emotion.dialogue import DEFAULT_TEXT_HEADS, DialogueHeads
from model.emotion.vocabulary import FAMILIES, SentenceEncoder
from model.training.dialogue_corpora import GOEMOTIONS_FAMILY

NEGATIVE = ("sadness", "anger", "fear", "disgust")


@pytest.fixture(scope="module")
def heads() -> DialogueHeads:
    return DialogueHeads.load(DEFAULT_TEXT_HEADS)


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder()


def unit_vectors(n: int, seed: int = 0) -> npt.NDArray[np.float32]:
    vectors = np.random.default_rng(seed).normal(size=(n, 384)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_shipped_heads_load_and_are_small(heads: DialogueHeads) -> None:
    assert heads.name == "text/2"
    assert DEFAULT_TEXT_HEADS.stat().st_size < 20_000_000
    reading = heads.read_text(unit_vectors(1)[0])
    assert set(reading.families) == set(FAMILIES)
    assert sum(reading.families.values()) == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= reading.valence <= 1.0
    assert len(heads.fine_labels(unit_vectors(1)[0])) == 28


def test_thanks_reads_happy_and_giving_up_reads_sad(heads: DialogueHeads, encoder: SentenceEncoder) -> None:
    thanks, giving_up = encoder.embed(["Thank you so much, that's wonderful", "I can't do this anymore"])
    happy = heads.read_text(thanks)
    assert happy.families["happiness"] > happy.families["sadness"]
    assert happy.family == "happiness" and happy.valence > 0
    sad = heads.read_text(giving_up)
    assert sad.families["sadness"] > sad.families["happiness"]
    assert sad.family in NEGATIVE and sad.valence < 0


def test_fine_labels_of_thanks_are_happy_ones_gratitude_among_them(
    heads: DialogueHeads, encoder: SentenceEncoder
) -> None:
    scores = heads.fine_labels(encoder.embed_one("Thank you so much, that's wonderful"))
    best = sorted(scores, key=scores.__getitem__, reverse=True)[:3]
    assert GOEMOTIONS_FAMILY[best[0]] == "happiness"
    assert "gratitude" in best
    assert heads.fine.words["gratitude"] == "grateful"


def test_context_cache_equals_reading_the_whole_history_from_scratch(heads: DialogueHeads) -> None:
    speakers = ["ana", "ben", "ana", "cleo", "ben", "ben", "ana", "cleo", "dev", "ana"]
    embeddings = unit_vectors(len(speakers), seed=1)
    call = heads.conversation()
    history: list[tuple[str, npt.NDArray[np.float32]]] = []
    for speaker, embedding in zip(speakers, embeddings, strict=True):
        reading = call.add(speaker, embedding)
        history.append((speaker, embedding))
        from_scratch = heads.read_history(history)
        for family in FAMILIES:
            assert reading.contextual.families[family] == pytest.approx(
                from_scratch.families[family], abs=1e-5
            )
        alone = heads.read_text(embedding)
        assert reading.text.families == alone.families


def test_context_depends_on_what_was_said_before(heads: DialogueHeads) -> None:
    before_a, before_b, now = unit_vectors(3, seed=2)
    first, second = heads.conversation(), heads.conversation()
    first.add("ana", before_a)
    second.add("ana", before_b)
    a, b = first.add("ben", now), second.add("ben", now)
    assert a.text.families == b.text.families
    assert a.contextual.families != b.contextual.families


def test_context_state_does_not_grow_with_the_call(heads: DialogueHeads) -> None:
    call = heads.conversation()
    embeddings = unit_vectors(500, seed=3)
    call.add("ana", embeddings[0])
    call.add("ben", embeddings[1])
    size = call.state_size
    for i in range(2, 500):
        call.add("ana" if i % 3 else "ben", embeddings[i])
    assert call.turns == 500
    assert call.state_size == size


def test_speakers_beyond_the_limit_drop_the_least_recently_heard(heads: DialogueHeads) -> None:
    call = heads.conversation(max_speakers=2)
    for speaker, embedding in zip(["ana", "ben", "cleo", "ana"], unit_vectors(4, seed=4), strict=True):
        call.add(speaker, embedding)
    one_view = heads.context.hidden_size
    assert call.state_size == 3 * one_view  # newcomer + two speakers
