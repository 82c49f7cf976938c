"""Manifests of labelled corpora, built from tiny fake copies whose file names follow each corpus's scheme."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import pytest

from model.emotion.vocabulary import FAMILIES, EmotionVocabulary
from model.training.corpora import (
    CREMA_D_EMOTIONS,
    EMODB_EMOTIONS,
    EMOVO_EMOTIONS,
    EVALUATION_ONLY,
    MEAD_EMOTIONS,
    RAVDESS_EMOTIONS,
    TESS_EMOTIONS,
    URDU_EMOTIONS,
    CorpusError,
    corpus_clips,
    write_manifest,
)
from model.training.evaluation import load_manifest
from stream.cli import main

RAVDESS_FILES = [
    "Actor_01/03-01-01-01-01-01-01.wav",  # neutral, male
    "Actor_01/03-01-02-02-01-02-01.wav",  # calm, strong
    "Actor_02/03-01-05-02-02-01-02.wav",  # angry, female
    "Actor_17/03-01-06-01-01-01-17.wav",  # fearful, held-out actor
    "Actor_24/01-01-08-02-02-02-24.mp4",  # surprised, audio-video, held-out actor
    "Actor_02/03-02-03-01-01-01-02.wav",  # sung: left out
]
TESS_FILES = [
    "OAF_angry/OAF_back_angry.wav",
    "OAF_Pleasant_surprise/OAF_back_ps.wav",
    "OAF_neutral/OA_bite_neutral.wav",  # misnamed in the original corpus
    "YAF_sad/YAF_dog_sad.wav",
]
EMODB_FILES = ["wav/03a01Wa.wav", "wav/08a02Lb.wav", "wav/16b10Ab.wav"]
CREMA_D_FILES = [
    "AudioWAV/1001_DFA_ANG_XX.wav",
    "AudioWAV/1002_IEO_HAP_HI.wav",
    "VideoFlash/1091_WSI_SAD_XX.flv",
]
MEAD_FILES = ["M003/video/front/contempt/level_2/001.mp4", "W009/audio/happy/level_3/012.m4a"]
CORPUS_FILES = {
    "ravdess": RAVDESS_FILES,
    "tess": TESS_FILES,
    "emodb": EMODB_FILES,
    "crema-d": CREMA_D_FILES,
    "mead": MEAD_FILES,
}


def fake_corpus(root: Path, names: list[str]) -> Path:
    """A folder of 10 ms silent 16 kHz wav files (any suffix) with the given relative names."""
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(b"\0\0" * 160)
    return root


@pytest.fixture
def ravdess(tmp_path: Path) -> Path:
    return fake_corpus(tmp_path / "ravdess", RAVDESS_FILES)


def by_name(clips: list) -> dict:
    return {clip.path.name: clip for clip in clips}


def test_ravdess_names_give_emotion_actor_gender_intensity_and_modality(ravdess: Path) -> None:
    clips = by_name(corpus_clips("ravdess", ravdess))
    angry = clips["03-01-05-02-02-01-02.wav"]
    assert (angry.labels, angry.family, angry.speaker, angry.gender) == (
        ("angry",),
        "anger",
        "ravdess-02",
        "f",
    )
    assert (angry.intensity, angry.modality, angry.lang, angry.dataset) == (
        "strong",
        "audio",
        "en",
        "ravdess",
    )
    surprised = clips["01-01-08-02-02-02-24.mp4"]
    assert (surprised.labels, surprised.modality, surprised.gender) == (("surprised",), "video", "f")
    assert clips["03-01-01-01-01-01-01.wav"].gender == "m"


def test_ravdess_calm_is_labelled_calm_in_the_neutral_family(ravdess: Path) -> None:
    calm = by_name(corpus_clips("ravdess", ravdess))["03-01-02-02-01-02-01.wav"]
    assert calm.labels == ("calm",)
    assert calm.family == "neutral"


def test_ravdess_songs_are_left_out(ravdess: Path) -> None:
    assert "03-02-03-01-01-01-02.wav" not in by_name(corpus_clips("ravdess", ravdess))


def test_ravdess_actors_1_to_16_train_and_17_to_24_test(ravdess: Path) -> None:
    train = corpus_clips("ravdess", ravdess, "train")
    test = corpus_clips("ravdess", ravdess, "test")
    assert {clip.speaker for clip in train} == {"ravdess-01", "ravdess-02"}
    assert {clip.speaker for clip in test} == {"ravdess-17", "ravdess-24"}
    assert len(corpus_clips("ravdess", ravdess, "all")) == len(train) + len(test) == 5


@pytest.mark.parametrize("corpus", sorted(EVALUATION_ONLY))
def test_reserved_corpora_refuse_a_train_split(tmp_path: Path, corpus: str) -> None:
    root = fake_corpus(tmp_path / corpus, CORPUS_FILES[corpus])
    with pytest.raises(CorpusError, match="reserved for evaluation"):
        corpus_clips(corpus, root, "train")


@pytest.mark.parametrize("corpus", sorted(EVALUATION_ONLY))
def test_reserved_corpora_rows_are_all_test(tmp_path: Path, corpus: str) -> None:
    root = fake_corpus(tmp_path / corpus, CORPUS_FILES[corpus])
    clips = corpus_clips(corpus, root)
    assert len(clips) == len(CORPUS_FILES[corpus])
    assert {clip.split for clip in clips} == {"test"}


def test_tess_reads_pleasant_surprise_and_the_misnamed_older_speaker_file(tmp_path: Path) -> None:
    clips = by_name(corpus_clips("tess", fake_corpus(tmp_path / "tess", TESS_FILES)))
    assert clips["OAF_back_ps.wav"].family == "surprise"
    assert clips["OAF_back_ps.wav"].labels[0] == "surprised"
    assert clips["OA_bite_neutral.wav"].speaker == clips["OAF_back_angry.wav"].speaker == "tess-oaf"
    assert {clip.split for clip in clips.values()} == {"train"}
    assert {clip.gender for clip in clips.values()} == {"f"}


def test_emodb_boredom_is_neutral_and_anxiety_fear_in_german(tmp_path: Path) -> None:
    clips = by_name(corpus_clips("emodb", fake_corpus(tmp_path / "emodb", EMODB_FILES)))
    assert (clips["08a02Lb.wav"].labels, clips["08a02Lb.wav"].family) == (("bored",), "neutral")
    assert clips["16b10Ab.wav"].family == "fear"
    assert [clips[name].gender for name in ("03a01Wa.wav", "08a02Lb.wav")] == ["m", "f"]
    assert {clip.lang for clip in clips.values()} == {"de"}


def test_emovo_italian_initials_give_the_family_and_the_speaker_folder_its_gender(tmp_path: Path) -> None:
    files = [
        "f1/dis-f1-b1.wav",
        "m3/gio-m3-n5.wav",
        "f2/pau-f2-l4.wav",
        "m1/rab-m1-d2.wav",
        "f3/sor-f3-b3.wav",
    ]
    clips = by_name(corpus_clips("emovo", fake_corpus(tmp_path / "emovo", [*files, "f1/notes-f1.wav"])))
    assert [clips[Path(f).name].family for f in files] == [
        "disgust",
        "happiness",
        "fear",
        "anger",
        "surprise",
    ]
    assert (clips["gio-m3-n5.wav"].speaker, clips["gio-m3-n5.wav"].gender) == ("emovo-m3", "m")
    assert (clips["dis-f1-b1.wav"].speaker, clips["dis-f1-b1.wav"].gender) == ("emovo-f1", "f")
    assert {clip.split for clip in clips.values()} == {"train"} and {
        clip.lang for clip in clips.values()
    } == {"it"}
    assert len(clips) == len(files)  # notes-f1.wav is not an EMOVO name


def test_urdu_is_a_dev_corpus_of_four_families_in_urdu(tmp_path: Path) -> None:
    files = [
        "Angry/SM1_F10_A010.wav",
        "Happy/SF3_F02_H045.wav",
        "Neutral/SM12_F01_N003.wav",
        "Sad/SM1_F11_S099.wav",
    ]
    clips = by_name(corpus_clips("urdu", fake_corpus(tmp_path / "urdu", files)))
    assert [clips[Path(f).name].family for f in files] == ["anger", "happiness", "neutral", "sadness"]
    assert clips["SF3_F02_H045.wav"].speaker == "urdu-f3" and clips["SF3_F02_H045.wav"].gender == "f"
    assert clips["SM1_F10_A010.wav"].speaker == clips["SM1_F11_S099.wav"].speaker == "urdu-m1"
    assert {clip.split for clip in clips.values()} == {"dev"} and {clip.lang for clip in clips.values()} == {
        "ur"
    }
    with pytest.raises(CorpusError, match="none of them in the train split"):
        corpus_clips("urdu", tmp_path / "urdu", "train")


def test_crema_d_gender_comes_from_the_corpus_demographics(tmp_path: Path) -> None:
    root = fake_corpus(tmp_path / "crema-d", CREMA_D_FILES)
    (root / "VideoDemographics.csv").write_text(
        '"ActorID","Age","Sex","Race","Ethnicity"\n1001,51,"Male","Caucasian","Not Hispanic"\n'
        '1002,21,"Female","Caucasian","Not Hispanic"\n'
    )
    clips = by_name(corpus_clips("crema-d", root))
    assert clips["1001_DFA_ANG_XX.wav"].gender == "m"
    assert (clips["1002_IEO_HAP_HI.wav"].gender, clips["1002_IEO_HAP_HI.wav"].intensity) == ("f", "high")
    assert clips["1091_WSI_SAD_XX.flv"].gender is None  # not in this demographics table
    assert clips["1091_WSI_SAD_XX.flv"].modality == "video"


@pytest.mark.parametrize(
    "table",
    [
        RAVDESS_EMOTIONS,
        TESS_EMOTIONS,
        EMODB_EMOTIONS,
        EMOVO_EMOTIONS,
        URDU_EMOTIONS,
        CREMA_D_EMOTIONS,
        MEAD_EMOTIONS,
    ],
)
def test_every_corpus_label_is_a_vocabulary_word_with_a_basic_family(table: dict) -> None:
    vocabulary = EmotionVocabulary.load()
    for labels, family in table.values():
        assert all(label in vocabulary for label in labels), labels
        assert family in FAMILIES


def test_files_that_are_not_clips_are_left_out(tmp_path: Path) -> None:
    root = fake_corpus(tmp_path / "emodb", [*EMODB_FILES, "wav/notes.wav"])
    (root / "README.txt").write_text("not audio")
    assert len(corpus_clips("emodb", root)) == len(EMODB_FILES)


def test_a_folder_without_clips_of_the_corpus_is_an_error(tmp_path: Path) -> None:
    root = fake_corpus(tmp_path / "elsewhere", TESS_FILES)
    with pytest.raises(CorpusError, match="no ravdess clips"):
        corpus_clips("ravdess", root)


def test_manifest_clips_are_relative_to_its_folder_and_load_for_evaluation(
    ravdess: Path, tmp_path: Path
) -> None:
    out = tmp_path / "manifests" / "ravdess_test.jsonl"
    assert write_manifest(corpus_clips("ravdess", ravdess, "test"), out) == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["clip"] == "../ravdess/Actor_17/03-01-06-01-01-01-17.wav"
    keys = [
        "clip",
        "labels",
        "family",
        "dataset",
        "speaker",
        "gender",
        "lang",
        "modality",
        "intensity",
        "split",
    ]
    assert list(rows[0]) == keys  # categories only: no valence or arousal
    loaded = load_manifest(out)
    assert loaded[0].clip == ravdess / "Actor_17" / "03-01-06-01-01-01-17.wav"
    assert loaded[0].family == "fear"
    assert loaded[0].valence is None
    assert dict(loaded[0].groups)["split"] == "test"


def test_cli_writes_the_manifest_and_prints_clips_per_class(
    ravdess: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ravdess_train.jsonl"
    assert main(["data", "ravdess", str(ravdess), "--out", str(out), "--split", "train"]) == 0
    assert len(out.read_text().splitlines()) == 3
    printed = capsys.readouterr().out
    assert "3 clips written" in printed
    assert "calm" in printed and "neutral" in printed


def test_cli_refuses_a_train_manifest_of_an_evaluation_corpus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = fake_corpus(tmp_path / "emodb", EMODB_FILES)
    out = tmp_path / "emodb_train.jsonl"
    assert main(["data", "emodb", str(root), "--out", str(out), "--split", "train"]) == 2
    assert "reserved for evaluation" in capsys.readouterr().err
    assert not out.exists()


def test_cli_samples_the_same_subset_for_the_same_seed(ravdess: Path, tmp_path: Path) -> None:
    def sampled(seed: int) -> list[str]:
        out = tmp_path / f"sample-{seed}.jsonl"
        assert (
            main(["data", "ravdess", str(ravdess), "--out", str(out), "--sample", "2", "--seed", str(seed)])
            == 0
        )
        return [json.loads(line)["clip"] for line in out.read_text().splitlines()]

    everything = tmp_path / "all.jsonl"
    assert main(["data", "ravdess", str(ravdess), "--out", str(everything)]) == 0
    all_clips = [json.loads(line)["clip"] for line in everything.read_text().splitlines()]
    first = sampled(0)
    assert len(first) == 2 and set(first) <= set(all_clips)
    assert first == sampled(0)  # reproducible: the shipped heads name the subset they were trained on
    assert first == [clip for clip in all_clips if clip in first]  # in the corpus's order
