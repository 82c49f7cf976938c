"""`microemo eval MANIFEST` on generated clips whose truth is known by construction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.harness import ROOT, run_cli
from tests.media import LABELLED_SCRIPTS, write_labelled_clips

pytestmark = pytest.mark.slow


def test_eval_scores_the_pipeline_on_labelled_clips(tmp_path: Path) -> None:
    manifest = write_labelled_clips(tmp_path / "clips")
    result = run_cli("eval", str(manifest), "--config", str(ROOT / "config.yaml"), timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    metrics = report["metrics"]
    assert metrics["clips"] == len(LABELLED_SCRIPTS)
    for key in ("accuracy", "weighted_f1", "label_precision", "label_recall"):
        assert 0 <= metrics[key] <= 1
    for key in ("ccc_valence", "ccc_arousal"):
        assert -1 <= metrics[key] <= 1
    by_clip = {c["clip"]: c for c in report["clips"]}
    assert "wonderful" in by_clip["pleased.mp4"]["transcript"].lower()
    # the unambiguous clips: a smile with praise reads positive, a frown with condolences negative
    assert by_clip["pleased.mp4"]["predicted"]["valence"] > 0.3
    assert by_clip["condolence.mp4"]["predicted"]["valence"] < 0
    assert metrics["ccc_valence"] > 0.3
    assert report["models"] and report["models"][0].startswith("fast-fusion")


def test_eval_names_a_broken_manifest_line(tmp_path: Path) -> None:
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text('{"clip": "x.mp4", "labels": []}\n')
    result = run_cli("eval", str(manifest), "--config", str(ROOT / "config.yaml"), timeout=300)
    assert result.returncode == 1
    assert "bad.jsonl:1" in result.stderr
