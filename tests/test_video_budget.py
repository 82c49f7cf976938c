"""Participants share the server's face-analysis rate, and the analysis threads yield the CPU under load."""

from __future__ import annotations

import os

from stream.config import VideoSettings
from stream.faces.analysis import VideoAnalysis


def test_participants_share_max_total_fps_and_get_it_back_when_one_leaves() -> None:
    settings = VideoSettings(analysis_fps=15, max_total_fps=20)
    first = VideoAnalysis(settings, "a")
    try:
        assert first.fps == 15  # alone: its own limit
        second = VideoAnalysis(settings, "b")
        try:
            assert first.fps == second.fps == 10  # two share 20
        finally:
            second.close()
        assert first.fps == 15
    finally:
        first.close()


def test_the_face_analysis_thread_is_never_niced() -> None:
    analysis = VideoAnalysis(VideoSettings(nice=7), "n")  # nice is the face processes' (test_face_process)
    try:
        worker = analysis._thread.native_id
        assert worker is not None
        assert os.getpriority(os.PRIO_PROCESS, worker) == os.getpriority(os.PRIO_PROCESS, 0)
    finally:
        analysis.close()
