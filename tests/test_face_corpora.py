"""Face image manifests, built from tiny fake copies of FER2013 (FaceExp's folders) and facial_expressions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.emotion.vocabulary import FAMILIES, EmotionVocabulary
from model.training.face_corpora import (
    FACIAL_EXPRESSIONS_EMOTIONS,
    FER2013_EMOTIONS,
    FaceCorpusError,
    capped,
    face_images,
    load_face_manifest,
    part_of,
    person_of,
    write_face_manifest,
)

FER_FILES = [
    "train/happy/0.jpg",
    "train/angry/1.jpg",
    "val/sad/2.jpg",
    "test/surprise/3.jpg",
    "test/odd/4.jpg",
]
LEGEND = [
    ("dwdii", "George_W_Bush_0001.jpg", "neutral"),
    ("dwdii", "George_W_Bush_0002.jpg", "happiness"),
    ("jhamski", "Dwarakish_12.jpg", "DISGUST"),  # one annotator wrote capitals
    ("302", "Kim_Dae-jung_0003.jpg", "contempt"),  # no basic family: left out
    ("302", "Ana_Palacio_0001.jpg", "sadness"),
    ("302", "Ana_Palacio_0001.jpg", "anger"),  # labelled twice, differently: left out
]


def fake_fer2013(root: Path) -> Path:
    for name in FER_FILES:
        (root / "split" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "split" / name).write_bytes(b"jpg")
    return root


def fake_facial_expressions(root: Path) -> Path:
    (root / "data").mkdir(parents=True)
    (root / "images").mkdir()
    lines = ["user.id,image,emotion"] + [",".join(row) for row in LEGEND]
    (root / "data" / "legend.csv").write_text("\n".join(lines) + "\n")
    for _, name, _ in LEGEND:
        (root / "images" / name).write_bytes(b"jpg")
    return root


def test_fer2013_keeps_its_partition_with_val_as_dev(tmp_path: Path) -> None:
    images = face_images("fer2013", fake_fer2013(tmp_path))
    found = {(i.path.parent.name, i.split, i.family) for i in images}
    assert found == {
        ("happy", "train", "happiness"),
        ("angry", "train", "anger"),
        ("sad", "dev", "sadness"),
        ("surprise", "test", "surprise"),
    }  # an unknown class folder is left out


def test_facial_expressions_labels_map_to_families_and_odd_rows_are_left_out(tmp_path: Path) -> None:
    images = face_images("facial_expressions", fake_facial_expressions(tmp_path))
    by_name = {i.path.name: i for i in images}
    assert set(by_name) == {"George_W_Bush_0001.jpg", "George_W_Bush_0002.jpg", "Dwarakish_12.jpg"}
    assert by_name["Dwarakish_12.jpg"].family == "disgust"
    assert by_name["George_W_Bush_0002.jpg"].labels == ("happy",)


def test_a_persons_photos_share_one_split(tmp_path: Path) -> None:
    images = face_images("facial_expressions", fake_facial_expressions(tmp_path))
    bush = {i.split for i in images if i.person == "facial_expressions-george_w_bush"}
    assert bush == {part_of("george_w_bush")}
    assert person_of("George_W_Bush_0012.jpg") == person_of("George_W_Bush_0001.jpg") == "george_w_bush"
    assert person_of("Dileep_65.jpg") == "dileep"
    assert person_of("Kim_Dae-jung_0003.jpg") == "kim_dae-jung"


def test_people_spread_over_all_three_splits() -> None:
    parts = [part_of(f"person {k}") for k in range(1000)]
    assert 0.5 < parts.count("train") / 1000 < 0.7
    assert parts.count("dev") > 120 and parts.count("test") > 120


def test_label_mappings_name_families_and_vocabulary_words() -> None:
    vocabulary = EmotionVocabulary.load()
    for labels, family in [*FER2013_EMOTIONS.values(), *FACIAL_EXPRESSIONS_EMOTIONS.values()]:
        assert family in FAMILIES
        assert all(label in vocabulary for label in labels)


def test_cap_keeps_the_same_images_and_only_adds_with_a_larger_cap(tmp_path: Path) -> None:
    for k in range(6):
        path = tmp_path / "split" / "train" / "happy" / f"{k}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"jpg")
    images = face_images("fer2013", tmp_path)
    two = {i.path for i in capped(images, {"train": 2})}
    four = {i.path for i in capped(images, {"train": 4})}
    assert len(two) == 2 and two < four
    assert two == {i.path for i in capped(list(reversed(images)), {"train": 2})}


def test_manifest_lines_are_relative_images_that_load_back(tmp_path: Path) -> None:
    images = face_images("fer2013", fake_fer2013(tmp_path / "fer"))
    manifest = tmp_path / "manifests" / "faces.jsonl"
    assert write_face_manifest(images, manifest) == len(images)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert rows[0]["clip"].startswith("../fer/split/")
    assert {r["modality"] for r in rows} == {"image"}
    assert {r["split"] for r in rows} <= {"train", "dev", "test"}
    assert [i.path for i in load_face_manifest(manifest)] == [i.path for i in images]


def test_a_folder_without_the_corpus_layout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FaceCorpusError, match="legend.csv"):
        face_images("facial_expressions", tmp_path)
    with pytest.raises(FaceCorpusError, match="split/"):
        face_images("fer2013", tmp_path)
    with pytest.raises(FaceCorpusError, match="unknown face corpus"):
        face_images("ck+", tmp_path)
