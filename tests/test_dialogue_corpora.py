"""Manifests of MELD, EmoryNLP and GoEmotions from small fake copies written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.emotion.vocabulary import FAMILIES, EmotionVocabulary
from model.training.dialogue_corpora import (
    GOEMOTIONS_FAMILY,
    GOEMOTIONS_LABELS,
    GOEMOTIONS_WORDS,
    DialogueCorpusError,
    asr_like,
    dialogue_lines,
    dialogues,
    read_dialogue_manifest,
    write_dialogue_manifest,
)

MELD_HEADER = (
    "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime\n"
)
EMORY_HEADER = "Utterance,Speaker,Emotion,Scene_ID,Utterance_ID,Season,Episode,Start_Time,End_Time\n"


def write_meld(root: Path, with_test: bool = True) -> None:
    folder = root / "data" / "MELD"
    folder.mkdir(parents=True)
    (folder / "train_sent_emo.csv").write_text(
        MELD_HEADER
        + '2,"You’re kidding, right?",Ross,surprise,negative,0,1,1,1,"00:00:01,000","00:00:02,000"\n'
        + "1,Hi there.,Rachel,neutral,neutral,0,0,1,1,x,y\n"
        + "3,This is the best day ever!,Monica,joy,positive,1,0,1,2,x,y\n",
        encoding="utf-8",
    )
    (folder / "dev_sent_emo.csv").write_text(
        MELD_HEADER + "1,I hate this.,Joey,anger,negative,0,0,2,1,x,y\n", encoding="utf-8"
    )
    if with_test:
        (folder / "test_sent_emo.csv").write_text(
            MELD_HEADER + "1,Oh no.,Phoebe,sadness,negative,0,0,3,1,x,y\n", encoding="utf-8"
        )


def test_meld_rows_carry_family_valence_dialogue_and_turn_order(tmp_path: Path) -> None:
    write_meld(tmp_path)
    lines = dialogue_lines("meld", tmp_path)
    train = [line for line in lines if line.split == "train"]
    assert [line.turn for line in train if line.dialogue == "meld-train-0"] == [0, 1]
    first, second = train[0], train[1]
    assert (first.text, first.family, first.valence, first.speaker) == ("Hi there.", "neutral", 0, "Rachel")
    assert second.text == "You're kidding, right?"  # typographic apostrophe as a transcript writes it
    assert (second.family, second.labels, second.valence) == ("surprise", ("surprised",), -1)
    joy = train[2]
    assert (joy.family, joy.dialogue, joy.valence) == ("happiness", "meld-train-1", 1)
    assert {line.split for line in lines} == {"train", "dev", "test"}


def test_meld_test_rows_are_always_test_and_the_test_file_may_be_absent(tmp_path: Path) -> None:
    write_meld(tmp_path / "with")
    assert [line.text for line in dialogue_lines("meld", tmp_path / "with", "test")] == ["Oh no."]
    assert all(
        line.dialogue.startswith("meld-test-") for line in dialogue_lines("meld", tmp_path / "with", "test")
    )
    write_meld(tmp_path / "without", with_test=False)
    lines = dialogue_lines("meld", tmp_path / "without")
    assert {line.split for line in lines} == {"train", "dev"}


def test_emorynlp_labels_map_through_the_stated_table(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "emorynlp"
    folder.mkdir(parents=True)
    rows = [
        "\"Oh, yeah!\",['Phoebe Buffay'],Joyful,1,2,1,2,a,b",
        "I'm fine.,['Ross Geller'],Peaceful,1,1,1,2,a,b",
        "Absolutely.,\"['Monica Geller', 'Rachel Green']\",Powerful,1,3,1,2,a,b",
        "Get out!,['Joey Tribbiani'],Mad,2,1,1,2,a,b",
        "What was that?,['Chandler Bing'],Scared,2,2,1,2,a,b",
    ]
    (folder / "emorynlp_train_final.csv").write_text(EMORY_HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    lines = dialogue_lines("emorynlp", tmp_path)
    assert [(line.dialogue, line.turn, line.family) for line in lines] == [
        ("emorynlp-train-s1e2c1", 0, "happiness"),
        ("emorynlp-train-s1e2c1", 1, "happiness"),
        ("emorynlp-train-s1e2c1", 2, "happiness"),
        ("emorynlp-train-s1e2c2", 0, "anger"),
        ("emorynlp-train-s1e2c2", 1, "fear"),
    ]
    assert lines[2].speaker == "Monica Geller & Rachel Green"
    assert lines[0].valence is None
    assert [len(d) for d in dialogues(lines)] == [3, 2]


def test_goemotions_is_multi_label_with_the_authors_ekman_families(tmp_path: Path) -> None:
    original, ekman = tmp_path / "data" / "original", tmp_path / "data" / "ekman"
    original.mkdir(parents=True)
    ekman.mkdir(parents=True)
    gratitude, neutral = GOEMOTIONS_LABELS.index("gratitude"), GOEMOTIONS_LABELS.index("neutral")
    anger, joy = GOEMOTIONS_LABELS.index("anger"), GOEMOTIONS_LABELS.index("joy")
    (original / "train.tsv").write_text(
        f"Thanks a lot!\t{gratitude}\tid1\nWhat a day\t{neutral}\tid2\nGreat, just great.\t{anger},{joy}\tid3\n",
        encoding="utf-8",
    )
    (ekman / "train.tsv").write_text(
        "Thanks a lot!\t3\tid1\nWhat a day\t4\tid2\nGreat, just great.\t0,3\tid3\n"
    )
    (original / "test.tsv").write_text(f"so sad\t{GOEMOTIONS_LABELS.index('grief')}\tid4\n", encoding="utf-8")
    lines = dialogue_lines("goemotions", tmp_path)
    assert [(line.labels, line.family, line.split) for line in lines] == [
        (("gratitude",), "happiness", "train"),
        (("neutral",), "neutral", "train"),
        (("anger", "joy"), "anger", "train"),
        (("grief",), "sadness", "test"),  # no ekman file for test: the table gives the family
    ]
    assert lines[2].families == ("anger", "happiness")
    assert lines[0].dialogue is None and lines[0].turn is None


def test_manifest_round_trips(tmp_path: Path) -> None:
    write_meld(tmp_path / "meld")
    out = tmp_path / "manifests" / "meld.jsonl"
    written = write_dialogue_manifest("meld", tmp_path / "meld", out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0] == {
        "text": "Hi there.",
        "family": "neutral",
        "labels": ["neutral"],
        "sentiment": 0,
        "dialogue": "meld-train-0",
        "turn": 0,
        "speaker": "Rachel",
        "dataset": "meld",
        "modality": "text",
        "split": "train",
    }
    assert [line.text for line in read_dialogue_manifest(out)] == [line.text for line in written]


def test_unknown_corpus_or_missing_files_are_explained(tmp_path: Path) -> None:
    with pytest.raises(DialogueCorpusError, match="unknown corpus"):
        dialogue_lines("friends", tmp_path)
    with pytest.raises(DialogueCorpusError, match="train_sent_emo.csv"):
        dialogue_lines("meld", tmp_path)


def test_asr_like_text_is_lower_case_without_punctuation() -> None:
    assert (
        asr_like("Oh my God, he’s lost it!  He's TOTALLY lost it...")
        == "oh my god he's lost it he's totally lost it"
    )


def test_label_tables_are_complete_and_name_vocabulary_words() -> None:
    assert set(GOEMOTIONS_FAMILY) == set(GOEMOTIONS_LABELS) == set(GOEMOTIONS_WORDS)
    assert set(GOEMOTIONS_FAMILY.values()) == set(FAMILIES)
    vocabulary = EmotionVocabulary.load()
    assert all(word in vocabulary for word in GOEMOTIONS_WORDS.values())
