"""`microemo analyze FILE`: a recorded call through the same pipeline, to JSONL events and a timeline PNG."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest

from tests.harness import ROOT, run_cli
from tests.media import Speech, word_error_rate, write_recording
from tests.synth import render_clip

pytestmark = pytest.mark.slow


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def run_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("analyze", *args, "--config", str(ROOT / "config.yaml"), timeout=300)


def test_recorded_call_gives_the_live_events_and_a_timeline(
    tmp_path: Path, speech: Speech, event_validator
) -> None:
    clip = render_clip(duration_s=4.0, fps=30)
    recording = write_recording(tmp_path / "call.mp4", list(clip.frames), 30, speech)
    out, plot = tmp_path / "events.jsonl", tmp_path / "timeline.png"

    result = run_analyze(str(recording), "--out", str(out), "--plot", str(plot))
    assert result.returncode == 0, result.stderr[-2000:]

    events = [json.loads(line) for line in out.read_text().splitlines()]
    for event in events:
        event_validator.validate(event)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "participant.join" and events[0]["tracks"] == ["audio", "video"]
    assert events[-1]["type"] == "participant.leave" and events[-1]["reason"] == "end_of_file"
    utterances = [e for e in events if e["type"] == "utterance"]
    assert len(utterances) == 2
    for utterance, sentence, (start, end) in zip(utterances, speech.sentences, speech.spans, strict=True):
        assert word_error_rate(sentence, utterance["text"]) <= 0.25
        assert utterance["t0"] == pytest.approx(start, abs=0.3)  # file time, exactly as in the recording
        assert utterance["t1"] == pytest.approx(end, abs=0.3)
    faces = [e for e in events if e["type"] == "face"]
    brow = [m for m in faces[0]["micro"] if m["region"] in ("brow_inner_raise", "brow_outer_raise")]
    assert any(abs(m["onset"] - 1.0) <= 0.15 and m["kind"] == "micro" for m in brow), faces[0]["micro"]
    emotions = [e for e in events if e["type"] == "emotion"]
    assert len(emotions) == 2 and emotions[0]["clues"]["visual"]["present"] > 0.8

    width, height = png_size(plot)
    assert width >= 800 and height >= 400
    assert 20_000 < plot.stat().st_size < 5_000_000


def test_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video container" * 100)
    result = run_analyze(str(broken))
    assert result.returncode == 1
    assert "broken.mp4" in result.stderr
    missing = run_analyze(str(tmp_path / "missing.mp4"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
