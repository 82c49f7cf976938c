"""`microemo eval MANIFEST` on generated clips whose truth is known by construction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.emotion.vocabulary import FAMILIES
from tests.harness import ROOT, run_cli
from tests.media import LABELLED_SCRIPTS, SPEECH_RATE, Speech, compose, write_labelled_clips

pytestmark = pytest.mark.slow


def test_eval_scores_the_pipeline_on_labelled_clips(tmp_path: Path) -> None:
    manifest = write_labelled_clips(tmp_path / "clips")
    out = tmp_path / "report.json"
    result = run_cli(
        "eval", str(manifest), "--out", str(out), "--config", str(ROOT / "config.yaml"), timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    metrics = report["metrics"]
    assert metrics["clips"] == len(LABELLED_SCRIPTS)
    for key in ("accuracy", "weighted_f1", "uar", "label_precision", "label_recall"):
        assert 0 <= metrics[key] <= 1
    for key in ("ccc_valence", "ccc_arousal"):
        assert -1 <= metrics[key] <= 1
    assert metrics["ccc_clips"] == metrics["answered"]  # every line of this manifest has valence and arousal
    by_clip = {c["clip"]: c for c in report["clips"]}
    assert "wonderful" in by_clip["pleased.mp4"]["transcript"].lower()
    # the unambiguous clips: a smile with praise reads positive, a frown with condolences negative, far apart
    pleased, condolence = (
        by_clip[name]["predicted"]["valence"] for name in ("pleased.mp4", "condolence.mp4")
    )
    assert pleased > 0 > condolence and pleased - condolence > 0.25
    assert metrics["ccc_valence"] > 0.3
    # every clip names the model of its estimates; the report names them all
    assert all(c["models"] for c in report["clips"] if c["answered"])
    assert report["models"] == sorted({m for c in report["clips"] for m in c["models"]})
    assert report["baseline"]["family"] in FAMILIES
    # the terminal gets a summary beside the baseline, not the JSON
    assert "majority" in result.stdout and str(out) in result.stdout
    assert not result.stdout.lstrip().startswith("{")


def test_eval_runs_audio_only_clips_of_a_label_only_manifest(tmp_path: Path) -> None:
    compose(["That is wonderful news, I love it."], lead_s=0.6, tail_s=0.8).write_wav(tmp_path / "happy.wav")
    silence = np.zeros(2 * SPEECH_RATE, np.float32)
    Speech(silence, (), ()).write_wav(tmp_path / "silence.wav")
    (tmp_path / "broken.wav").write_bytes(b"not audio at all " * 64)
    lines = [
        {"clip": "happy.wav", "labels": ["happy"], "dataset": "synth", "modality": "audio", "speaker": 1},
        {
            "clip": "silence.wav",
            "labels": ["calm"],
            "family": "neutral",
            "dataset": "synth",
            "modality": "audio",
        },
        {"clip": "broken.wav", "labels": ["sad"], "modality": "audio"},
        {"clip": "not-there.wav", "labels": ["sad"]},  # past --limit: never opened
    ]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "report.json"
    result = run_cli(
        "eval", str(manifest), "--limit", "3", "--out", str(out), "--config", str(ROOT / "config.yaml"),
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    metrics = report["metrics"]
    assert (metrics["clips"], metrics["answered"], metrics["unanswered"]) == (3, 1, 2)
    assert (metrics["ccc_valence"], metrics["ccc_arousal"], metrics["ccc_clips"]) == (None, None, 0)
    by_clip = {c["clip"]: c for c in report["clips"]}
    spoken = by_clip["happy.wav"]
    assert spoken["answered"] and spoken["models"] and "wonderful" in spoken["transcript"].lower()
    assert spoken["predicted"]["family"] in FAMILIES
    # nobody spoke: no estimate, scored wrong, not taken as neutral although the truth is neutral
    assert report["unanswered"] == ["silence.wav", "broken.wav"]
    assert by_clip["silence.wav"]["truth"]["family"] == "neutral"
    assert by_clip["silence.wav"]["predicted"] == {
        "family": "none",
        "labels": [],
        "valence": None,
        "arousal": None,
    }
    # a file that cannot be decoded is named and scored as unanswered; the other clips still count
    assert report["failed"] == ["broken.wav"] and by_clip["broken.wav"]["error"]
    assert report["groups"]["modality"]["audio"]["clips"] == 3
    assert set(report["groups"]["speaker"]) == {"1"}
    assert sum(map(sum, report["confusion"]["counts"])) == 3
    assert "unanswered (2): silence.wav, broken.wav" in result.stdout
    assert "3/3" in result.stderr  # the progress bar over clips


def test_eval_names_a_broken_manifest_line(tmp_path: Path) -> None:
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text('{"clip": "x.mp4", "labels": []}\n')
    result = run_cli("eval", str(manifest), "--config", str(ROOT / "config.yaml"), timeout=300)
    assert result.returncode == 1
    assert "bad.jsonl:1" in result.stderr


def test_eval_names_missing_clips_before_running_any(tmp_path: Path) -> None:
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text('{"clip": "gone.wav", "labels": ["sad"]}\n')
    result = run_cli("eval", str(manifest), "--config", str(ROOT / "config.yaml"), timeout=300)
    assert result.returncode == 1
    assert "gone.wav" in result.stderr and "not found" in result.stderr


def test_eval_reads_text_lines_in_their_dialogue_order_with_the_real_text_heads(tmp_path: Path) -> None:
    """Text lines (no clip) go to the emotion service in turn order, each dialogue a conversation of its own;
    the report breaks the scores down by modality."""
    lines = [  # written out of order: turn decides
        {"text": "Thank you so much, that's wonderful!", "turn": 1, "speaker": "Ross", "family": "happiness"},
        {"text": "I got you the tickets.", "turn": 0, "speaker": "Rachel", "family": "neutral"},
        {"text": "I can't do this anymore.", "turn": 0, "speaker": "Joey", "family": "sadness"},
    ]
    manifest = tmp_path / "dialogue.jsonl"
    manifest.write_text(
        "".join(
            json.dumps(
                {**line, "labels": [line["family"]], "dialogue": "d2" if line["speaker"] == "Joey" else "d1"}
            )
            + "\n"
            for line in lines
        )
    )
    out = tmp_path / "report.json"
    result = run_cli(
        "eval", str(manifest), "--out", str(out), "--config", str(ROOT / "config.yaml"), timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["groups"]["modality"]) == {"text"}
    by_clip = {c["clip"]: c["predicted"]["family"] for c in report["clips"]}
    assert by_clip["d1#1"] == "happiness" and by_clip["d2#0"] == "sadness"
