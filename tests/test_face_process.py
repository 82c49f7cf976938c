"""Face analysis in child processes: same faces as in the server, failures reported, dead or hung children replaced,
and no child outliving its server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from model.face.landmarks import FaceModelMissingError, MediaPipeFaceAnalyzer
from model.face.signals import face_signals
from stream import metrics
from stream.config import VideoSettings
from stream.faces import face_process
from stream.faces.face_process import FaceProcessError, FaceProcesses
from tests.synth import rest_frame

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def processes() -> Iterator[FaceProcesses]:
    faces = FaceProcesses(VideoSettings(), 1)
    yield faces
    faces.close()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (ended, not yet reaped by its parent) counts as gone
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not alive(pid)


def test_the_faces_found_in_the_process_are_those_found_in_the_server(processes: FaceProcesses) -> None:
    frame = rest_frame()
    analyzer = processes.analyzer()
    here = MediaPipeFaceAnalyzer(num_faces=2)
    try:
        remote, local = analyzer.analyze(frame, 0.0), here.analyze(frame, 0.0)
    finally:
        analyzer.close()
        here.close()
    assert len(remote) == len(local) == 1
    (face,), (expected,) = remote, local
    np.testing.assert_allclose(face.landmarks, expected.landmarks, atol=1e-3)
    assert face.blendshapes == pytest.approx(expected.blendshapes, abs=1e-4)
    assert face.signals is not None  # computed in the child, so the server does not
    wanted = face_signals(expected.landmarks, expected.blendshapes, expected.pose)
    assert face.signals.values == pytest.approx(wanted.values, abs=1e-3)


def test_a_frame_the_model_fails_on_is_an_error_and_the_next_one_is_analysed(
    processes: FaceProcesses,
) -> None:
    analyzer = processes.analyzer()
    try:
        with pytest.raises(FaceProcessError, match="ValueError"):
            analyzer.analyze(np.zeros(10, np.uint8), 0.0)  # not an image
        assert len(analyzer.analyze(rest_frame(), 0.1)) == 1
    finally:
        analyzer.close()


def test_a_killed_process_is_replaced_and_analysis_goes_on(
    processes: FaceProcesses, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(face_process, "RESTART_AFTER_S", 0.0)
    analyzer = processes.analyzer()
    try:
        assert len(analyzer.analyze(rest_frame(), 0.0)) == 1
        child = processes.processes[0]
        first_pid = child.pid
        assert first_pid is not None
        lost = metrics.REGISTRY.get_sample_value("microemo_face_processes_lost_total") or 0.0
        os.kill(first_pid, signal.SIGKILL)
        with pytest.raises(FaceProcessError, match="faces-0"):
            analyzer.analyze(rest_frame(), 0.1)
        assert metrics.REGISTRY.get_sample_value("microemo_face_processes_lost_total") == lost + 1
        # a new child, with a new analyzer for the stream
        assert len(analyzer.analyze(rest_frame(), 0.2)) == 1
        assert child.restarts == 1 and child.pid != first_pid
    finally:
        analyzer.close()


def test_a_hung_process_is_given_up_on_and_replaced(
    processes: FaceProcesses, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(face_process, "REPLY_TIMEOUT_S", 1.0)
    monkeypatch.setattr(face_process, "RESTART_AFTER_S", 0.0)
    analyzer = processes.analyzer()
    child = processes.processes[0]
    hung_pid = child.pid
    assert hung_pid is not None
    try:
        os.kill(hung_pid, signal.SIGSTOP)
        with pytest.raises(FaceProcessError, match="within 1 s"):
            analyzer.analyze(rest_frame(), 0.0)
        assert not alive(hung_pid)  # killed, not left behind stopped
        assert len(analyzer.analyze(rest_frame(), 0.1)) == 1
    finally:
        analyzer.close()


def test_a_missing_face_model_stops_the_start_with_its_own_error(tmp_path: Path) -> None:
    with pytest.raises(FaceModelMissingError, match="nowhere.task"):
        FaceProcesses(VideoSettings(model_path=str(tmp_path / "nowhere.task")), 1)


def test_participants_are_spread_over_the_processes() -> None:
    faces = FaceProcesses(VideoSettings(), 2)
    try:
        first, second, third = faces.analyzer(), faces.analyzer(), faces.analyzer()
        assert sorted(p.streams for p in faces.processes) == [1, 2]
        first.close()
        second.close()
        assert sorted(p.streams for p in faces.processes) == [0, 1]
        third.close()
        assert [p.streams for p in faces.processes] == [0, 0]
    finally:
        faces.close()
    assert all(p.pid is None for p in faces.processes)


def test_no_child_outlives_a_server_that_is_killed() -> None:
    script = (
        "import sys, time\n"
        "from stream.config import VideoSettings\n"
        "from stream.faces.face_process import FaceProcesses\n"
        "faces = FaceProcesses(VideoSettings(), 1)\n"
        "print(faces.processes[0].pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    server = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert server.stdout is not None
        child = int(server.stdout.readline())
        assert alive(child)
        server.kill()  # no cleanup runs: only the closed socket tells the child
        server.wait(timeout=5)
        assert wait_gone(child, 10)
    finally:
        server.kill()


def test_the_face_process_runs_at_the_configured_niceness() -> None:
    faces = FaceProcesses(VideoSettings(nice=7), 1)
    try:
        child = faces.processes[0].pid
        assert child is not None
        assert os.getpriority(os.PRIO_PROCESS, child) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 7)
    finally:
        faces.close()
