"""Evaluation metrics on predictions whose scores are known by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.evaluation import (
    ClipPrediction,
    LabelledClip,
    ManifestError,
    ccc,
    evaluate,
    load_manifest,
    set_scores,
    weighted_f1,
)
from model.vocabulary import EmotionVocabulary


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


def test_label_sets_merge_synonyms(vocabulary: EmotionVocabulary) -> None:
    assert vocabulary.canonical("glad") == vocabulary.canonical("happy")
    precision, recall = set_scores([["happy", "relieved"]], [["glad", "angry", "bored"]], vocabulary)
    assert precision == pytest.approx(1 / 3)
    assert recall == pytest.approx(1 / 2)


def test_evaluate_reports_every_metric(vocabulary: EmotionVocabulary, tmp_path: Path) -> None:
    clips = [
        LabelledClip(tmp_path / "a.mp4", ("happy",), 0.8, 0.3),
        LabelledClip(tmp_path / "b.mp4", ("furious",), -0.7, 0.8),
    ]
    predictions = [ClipPrediction(("glad", "excited"), 0.6, 0.4), ClipPrediction(("sad",), -0.5, -0.2)]
    report = evaluate(clips, predictions, vocabulary, top_k=2)
    assert report["accuracy"] == 0.5
    assert report["label_recall"] == 0.5  # glad = happy; sad is not furious
    assert report["label_precision"] == pytest.approx((1 / 2 + 0) / 2)
    assert -1 <= report["ccc_arousal"] < report["ccc_valence"] <= 1


def test_manifest_lines_are_checked(tmp_path: Path) -> None:
    manifest = tmp_path / "clips.jsonl"
    good = {"clip": "a.mp4", "labels": ["happy"], "valence": 0.5, "arousal": 0.2, "description": "smiles"}
    manifest.write_text(json.dumps(good) + "\n# a comment\n")
    (clip,) = load_manifest(manifest)
    assert clip.clip == (tmp_path / "a.mp4").resolve() and clip.description == "smiles"
    manifest.write_text(json.dumps({**good, "valence": 3}) + "\n")
    with pytest.raises(ManifestError, match="clips.jsonl:1"):
        load_manifest(manifest)
    manifest.write_text(json.dumps({"clip": "a.mp4"}) + "\n")
    with pytest.raises(ManifestError, match="labels"):
        load_manifest(manifest)
