"""Evaluation metrics on predictions whose scores are known by hand."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from model.emotion.vocabulary import FAMILIES, EmotionVocabulary
from model.training.evaluation import (
    UNANSWERED,
    ClipPrediction,
    LabelledClip,
    ManifestError,
    ccc,
    confusion_matrix,
    evaluate,
    group_scores,
    load_manifest,
    majority_baseline,
    per_family,
    set_scores,
    true_family,
    unweighted_average_recall,
    weighted_f1,
)


@pytest.fixture(scope="module")
def vocabulary() -> EmotionVocabulary:
    return EmotionVocabulary.load()


def test_ccc_is_one_for_agreement_and_penalises_bias() -> None:
    assert ccc([0.1, 0.5, -0.3], [0.1, 0.5, -0.3]) == pytest.approx(1.0)
    assert ccc([0.1, 0.5, -0.3], [0.6, 1.0, 0.2]) < 0.5  # perfectly correlated but shifted
    assert ccc([1, -1], [-1, 1]) == pytest.approx(-1.0)


def test_weighted_f1_by_hand() -> None:
    truth = ["happiness", "happiness", "anger", "sadness"]
    predicted = ["happiness", "anger", "anger", "sadness"]
    # happiness: p=1, r=0.5, f1=2/3 (weight 2); anger: p=0.5, r=1, f1=2/3; sadness: 1
    assert weighted_f1(truth, predicted) == pytest.approx((2 * 2 / 3 + 2 / 3 + 1) / 4)


def test_uar_counts_every_true_class_alike() -> None:
    truth = ["happiness"] * 8 + ["anger"] * 2
    predicted = ["happiness"] * 10
    assert unweighted_average_recall(truth, predicted) == pytest.approx((1 + 0) / 2)


def test_per_family_scores_by_hand() -> None:
    truth = ["happiness", "happiness", "anger", "sadness"]
    predicted = ["happiness", "anger", "anger", UNANSWERED]
    scores = per_family(truth, predicted)
    assert list(scores) == ["anger", "happiness", "sadness"]  # FAMILIES order; "none" is no family
    assert scores["anger"] == {
        "precision": 0.5,
        "recall": 1.0,
        "f1": pytest.approx(2 / 3),
        "support": 1,
        "predicted": 2,
    }
    assert scores["happiness"]["recall"] == 0.5 and scores["happiness"]["precision"] == 1.0
    assert scores["sadness"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1, "predicted": 0}


def test_confusion_matrix_rows_are_truth_columns_predicted() -> None:
    truth = ["happiness", "happiness", "anger", "sadness"]
    predicted = ["happiness", "anger", "anger", UNANSWERED]
    confusion = confusion_matrix(truth, predicted)
    assert confusion["truth"] == list(FAMILIES)
    assert confusion["predicted"] == [*FAMILIES, "none"]
    counts = confusion["counts"]

    def cell(t: str, p: str) -> int:
        return int(counts[confusion["truth"].index(t)][confusion["predicted"].index(p)])

    assert cell("happiness", "happiness") == 1 and cell("happiness", "anger") == 1
    assert cell("anger", "anger") == 1 and cell("sadness", "none") == 1
    assert sum(map(sum, counts)) == 4


def test_majority_baseline_always_answers_the_most_frequent_family() -> None:
    truth = ["neutral"] * 3 + ["anger"] * 1
    baseline = majority_baseline(truth)
    assert baseline["family"] == "neutral"
    assert baseline["accuracy"] == 0.75
    # neutral: p=0.75, r=1, f1=6/7 (weight 3); anger: f1=0
    assert baseline["weighted_f1"] == pytest.approx(3 * (6 / 7) / 4)
    assert baseline["uar"] == 0.5


def test_majority_baseline_breaks_a_tie_in_families_order() -> None:
    assert majority_baseline(["sadness", "anger"])["family"] == "anger"


def test_groups_score_each_value_of_each_key(tmp_path: Path) -> None:
    clips = [
        LabelledClip(tmp_path / "1.wav", ("happy",), groups={"dataset": "a", "speaker": "1"}),
        LabelledClip(tmp_path / "2.wav", ("happy",), groups={"dataset": "a", "speaker": "2"}),
        LabelledClip(tmp_path / "3.wav", ("sad",), groups={"dataset": "a", "speaker": "2"}),
        LabelledClip(tmp_path / "4.mp4", ("angry",), groups={"dataset": "b"}),
    ]
    truth = ["happiness", "happiness", "sadness", "anger"]
    predicted = ["happiness", "sadness", "sadness", UNANSWERED]
    groups = group_scores(clips, truth, predicted)
    assert set(groups) == {"dataset", "speaker", "modality"}
    assert set(groups["modality"]) == {"media"} and groups["modality"]["media"]["clips"] == 4
    a = groups["dataset"]["a"]
    assert (a["clips"], a["answered"], a["accuracy"]) == (3, 3, pytest.approx(2 / 3))
    assert (a["majority_family"], a["majority_share"]) == ("happiness", pytest.approx(2 / 3))
    assert groups["dataset"]["b"]["accuracy"] == 0.0 and groups["dataset"]["b"]["answered"] == 0
    assert groups["speaker"]["2"]["clips"] == 2  # the clip without a speaker is in no speaker group
    assert sum(s["clips"] for s in groups["speaker"].values()) == 3


def test_evaluate_reports_every_metric(vocabulary: EmotionVocabulary, tmp_path: Path) -> None:
    clips = [
        LabelledClip(tmp_path / "a.mp4", ("happy",), 0.8, 0.3),
        LabelledClip(tmp_path / "b.mp4", ("furious",), -0.7, 0.8),
    ]
    predictions = [ClipPrediction(("glad", "excited"), 0.6, 0.4), ClipPrediction(("sad",), -0.5, -0.2)]
    report = evaluate(clips, predictions, vocabulary, top_k=2)
    metrics = report["metrics"]
    assert metrics["accuracy"] == 0.5 and metrics["uar"] == 0.5
    assert metrics["label_recall"] == 0.5  # glad = happy; sad is not furious
    assert metrics["label_precision"] == pytest.approx((1 / 2 + 0) / 2)
    assert -1 <= metrics["ccc_arousal"] < metrics["ccc_valence"] <= 1
    assert metrics["ccc_clips"] == 2
    assert set(report) == {"metrics", "baseline", "per_family", "confusion", "groups", "unanswered"}
    assert report["baseline"]["accuracy"] == 0.5


def test_unanswered_clip_is_wrong_and_out_of_ccc(vocabulary: EmotionVocabulary, tmp_path: Path) -> None:
    clips = [
        LabelledClip(tmp_path / "a.mp4", ("happy",), 0.8, 0.3),
        LabelledClip(tmp_path / "b.mp4", ("sad",), -0.6, -0.3),
        LabelledClip(tmp_path / "c.mp4", ("neutral",), 0.0, 0.0),
    ]
    predictions = [ClipPrediction(("glad",), 0.6, 0.4), ClipPrediction(("sad",), -0.5, -0.2), None]
    report = evaluate(clips, predictions, vocabulary)
    metrics = report["metrics"]
    assert (metrics["answered"], metrics["unanswered"], report["unanswered"]) == (2, 1, ["c.mp4"])
    assert metrics["accuracy"] == pytest.approx(2 / 3)  # a neutral clip is not right by saying nothing
    assert metrics["ccc_clips"] == 2
    assert metrics["ccc_valence"] == pytest.approx(ccc([0.8, -0.6], [0.6, -0.5]))
    neutral_row = report["confusion"]["counts"][FAMILIES.index("neutral")]
    assert neutral_row[report["confusion"]["predicted"].index("none")] == 1
    assert metrics["label_recall"] == pytest.approx(2 / 3)


def test_label_only_clips_leave_ccc_null(vocabulary: EmotionVocabulary, tmp_path: Path) -> None:
    clips = [LabelledClip(tmp_path / "a.wav", ("happy",)), LabelledClip(tmp_path / "b.wav", ("angry",))]
    predictions = [ClipPrediction(("happy",), 0.6, 0.4), ClipPrediction(("calm",), 0.2, -0.3)]
    metrics = evaluate(clips, predictions, vocabulary)["metrics"]
    assert (metrics["ccc_valence"], metrics["ccc_arousal"], metrics["ccc_clips"]) == (None, None, 0)
    assert metrics["accuracy"] == 0.5


def test_ccc_uses_only_the_clips_with_affect(vocabulary: EmotionVocabulary, tmp_path: Path) -> None:
    clips = [
        LabelledClip(tmp_path / "a.wav", ("happy",), 0.8, 0.3),
        LabelledClip(tmp_path / "b.wav", ("sad",), -0.6, -0.3),
        LabelledClip(tmp_path / "c.wav", ("angry",)),
    ]
    predictions = [ClipPrediction(("happy",), 0.6, 0.4), ClipPrediction(("sad",), -0.5, -0.2)] + [
        ClipPrediction(("angry",), -0.9, 0.9)
    ]
    metrics = evaluate(clips, predictions, vocabulary)["metrics"]
    assert metrics["ccc_clips"] == 2
    assert metrics["ccc_arousal"] == pytest.approx(ccc([0.3, -0.3], [0.4, -0.2]))


def test_family_key_overrides_the_first_label(vocabulary: EmotionVocabulary, tmp_path: Path) -> None:
    calm = LabelledClip(tmp_path / "a.wav", ("calm",))
    assert true_family(calm, vocabulary) == "happiness"  # where the vocabulary places "calm"
    meant_neutral = LabelledClip(tmp_path / "a.wav", ("calm",), family="neutral")
    assert true_family(meant_neutral, vocabulary) == "neutral"
    report = evaluate([meant_neutral], [ClipPrediction(("neutral",), 0.0, 0.0)], vocabulary)
    assert report["metrics"]["accuracy"] == 1.0


def test_a_clip_no_family_can_be_found_for_is_refused(vocabulary: EmotionVocabulary, tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="family"):
        true_family(LabelledClip(tmp_path / "a.wav", ("ps",)), vocabulary)


def test_label_sets_merge_synonyms(vocabulary: EmotionVocabulary) -> None:
    assert vocabulary.canonical("glad") == vocabulary.canonical("happy")
    precision, recall = set_scores([["happy", "relieved"]], [["glad", "angry", "bored"]], vocabulary)
    assert precision == pytest.approx(1 / 3)
    assert recall == pytest.approx(1 / 2)


def test_manifest_lines_are_checked(tmp_path: Path) -> None:
    manifest = tmp_path / "clips.jsonl"
    good = {"clip": "a.mp4", "labels": ["happy"], "valence": 0.5, "arousal": 0.2, "description": "smiles"}
    manifest.write_text(json.dumps(good) + "\n# a comment\n")
    (clip,) = load_manifest(manifest)
    assert clip.clip == (tmp_path / "a.mp4").resolve() and clip.description == "smiles"
    assert clip.name == "a.mp4" and clip.groups == {} and clip.family is None
    for bad, complaint in (
        ({**good, "valence": 3}, "-1..1"),
        ({"clip": "a.mp4"}, "labels"),
        ({**good, "labels": []}, "labels"),
        ({"clip": "a.mp4", "labels": ["happy"], "valence": 0.5}, "together"),
        ({**good, "family": "joy"}, "family"),
        ({**good, "speaker": [1, 2]}, "speaker"),
    ):
        manifest.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(ManifestError, match=f"clips.jsonl:2.*{complaint}"):
            load_manifest(manifest)


def test_label_only_manifest_with_family_and_grouping_keys(tmp_path: Path) -> None:
    manifest = tmp_path / "ravdess.jsonl"
    line = {"clip": "Actor_01/03-01-02.wav", "labels": ["calm"], "family": "neutral"}
    manifest.write_text(json.dumps({**line, "dataset": "ravdess", "speaker": 1, "modality": "audio"}) + "\n")
    (clip,) = load_manifest(manifest)
    assert (clip.valence, clip.arousal, clip.family) == (None, None, "neutral")
    assert clip.groups == {"dataset": "ravdess", "speaker": "1", "modality": "audio"}
    assert clip.name == "Actor_01/03-01-02.wav"


def test_summary_shows_the_scores_beside_the_baseline(vocabulary: EmotionVocabulary, tmp_path: Path) -> None:
    from rich.console import Console

    from stream.evaluate import summary

    clips = [
        LabelledClip(tmp_path / "a.wav", ("happy",), groups={"speaker": "[01]"}),
        LabelledClip(tmp_path / "b.wav", ("happy",), groups={"speaker": "02"}),
        LabelledClip(tmp_path / "c.wav", ("sad",), groups={"speaker": "02"}),
    ]
    scores = evaluate(clips, [ClipPrediction(("happy",), 0.5, 0.2), None, None], vocabulary)
    report = {"manifest": "m.jsonl", "models": ["fast-fusion"], **scores, "failed": []}
    console = Console(file=io.StringIO(), width=120, markup=False)
    console.print(summary(report))
    text = console.file.getvalue()
    assert "majority (happiness)" in text and "0.667" in text  # the baseline's accuracy
    assert "by speaker" in text and "[01]" in text
    assert "unanswered (2): b.wav, c.wav" in text


def test_arousal_high_or_low_is_scored_against_the_family_or_the_labelled_arousal() -> None:
    vocabulary = EmotionVocabulary.load()
    clips = [
        LabelledClip(Path("a.wav"), ("angry",)),  # anger: high
        LabelledClip(Path("b.wav"), ("sad",)),  # sadness: low
        LabelledClip(Path("c.wav"), ("calm",), family="neutral"),  # neutral: low
        LabelledClip(Path("d.wav"), ("happy",), valence=0.5, arousal=-0.5),  # labelled low, whatever the word
    ]
    predictions = [
        ClipPrediction(("angry",), -0.5, 0.6),
        ClipPrediction(("sad",), -0.5, 0.3),  # wrong: high
        None,  # unanswered: wrong
        ClipPrediction(("happy",), 0.5, -0.2),
    ]
    metrics = evaluate(clips, predictions, vocabulary)["metrics"]
    assert metrics["arousal_accuracy"] == pytest.approx(0.5)
    assert metrics["arousal_majority_share"] == pytest.approx(0.75)


def test_a_line_may_carry_text_instead_of_a_clip_and_is_scored_by_modality(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        '{"text": "Oh my God, that is great!", "labels": ["joy"], "family": "happiness", "dialogue": "d1", '
        '"turn": 0, "speaker": "Monica", "dataset": "meld"}\n'
        '{"clip": "face.jpg", "labels": ["happy"], "dataset": "faces"}\n'
        '{"clip": "a.wav", "labels": ["sad"], "dataset": "ravdess"}\n'
    )
    text, image, media = load_manifest(manifest)
    assert text.clip is None and text.text == "Oh my God, that is great!" and text.name == "d1#0"
    assert text.groups["speaker"] == "Monica" and (text.dialogue, text.turn) == ("d1", 0)
    assert [c.modality for c in (text, image, media)] == ["text", "image", "media"]
    groups = group_scores([text, image, media], ["happiness"] * 3, ["happiness", "neutral", "neutral"])
    assert {value: s["accuracy"] for value, s in groups["modality"].items()} == {
        "text": 1.0,
        "image": 0.0,
        "media": 0.0,
    }


def test_a_line_with_both_a_clip_and_a_text_is_refused(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"clip": "a.wav", "text": "hi", "labels": ["happy"]}\n')
    with pytest.raises(ManifestError, match="clip or a text"):
        load_manifest(manifest)


def test_expected_calibration_error_is_the_gap_between_confidence_and_accuracy() -> None:
    from model.training.fit_fusion import expected_calibration_error

    sure = np.eye(7)[[0, 1, 2, 3]]  # certain of each answer
    assert expected_calibration_error(sure, np.array([0, 1, 2, 3])) == 0.0  # and right every time
    assert expected_calibration_error(sure, np.array([1, 2, 3, 4])) == 1.0  # and wrong every time
    halves = np.full((4, 7), 0.5 / 6)
    halves[:, 0] = 0.5  # 50 % sure of family 0, right half the time: calibrated
    assert expected_calibration_error(halves, np.array([0, 0, 1, 1])) == pytest.approx(0.0)
