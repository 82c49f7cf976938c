"""Received video frames → which are sampled: for face analysis (one per 1/fps, the participants' fair share of the
server's rate, thinned under overload) and, for the visual encoder, whole frames on a grid of their own."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from model.microemo.clip import next_grid_time
from stream.config import VideoSettings
from stream.overload import FrameShare, Shedder

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WholeFrames:
    """Whole frames the visual encoder needs: resized to size × size, fps of them a second (as in training)."""

    size: int
    fps: float


@dataclass(frozen=True, slots=True)
class Sample:
    """What becomes of a sampled frame: analysed for faces, kept whole for the visual encoder, or both."""

    analyse: bool
    keep: bool


class FrameSampler:
    """Participants share `max_total_fps`: each samples at min(analysis_fps, max_total_fps / participants). While
    speech runs late (the loop, or the audio at the VAD), `shedder` thins the sampled frames further
    (stream/overload.py; counted in `shed`).

    With `whole_frames` (only when a visual encoder serves the LLM stage) whole frames are also kept on a grid of
    their own at whole_frames.fps (training's), whatever the analysis rate: a kept frame is also analysed unless
    shed (its face crop is part of the encoder's input, as in training)."""

    _live = 0  # participants whose frames are sampled now, in this process
    _live_lock = threading.Lock()

    def __init__(
        self, settings: VideoSettings, name: str, whole_frames: WholeFrames | None, shedder: Shedder | None
    ) -> None:
        self._settings = settings
        self._name = name
        self.whole_frames = whole_frames
        self._share = FrameShare(shedder)
        self._next_sample_t = 0.0
        self._next_keep_t = 0.0
        self.shed = 0  # sampled frames not analysed because speech ran late
        self.missed_whole_frames = 0  # grid times of whole_frames.fps with no frame to keep
        self._warned_whole_frames = False
        with FrameSampler._live_lock:
            FrameSampler._live += 1
        self._counted = True

    @property
    def fps(self) -> float:
        """This participant's share of the analysis rate now."""
        return min(self._settings.analysis_fps, self._settings.max_total_fps / max(1, FrameSampler._live))

    def sample(self, t: float) -> Sample | None:
        """The frame at media time t: sampled (and what for), or None."""
        keep = self.whole_frames is not None and t + 1e-6 >= self._next_keep_t
        if keep:
            self._keep_due(t)
        elif t + 1e-6 < self._next_sample_t:
            return None
        self._next_sample_t = max(self._next_sample_t + 1 / self.fps, t)
        analyse = self._share.keep()  # overload sheds frames before speech waits (stream/overload.py)
        if not analyse:
            self.shed += 1
            if not keep:
                return None
        return Sample(analyse, keep)

    def _keep_due(self, t: float) -> None:
        """Advance the whole-frame grid past t; a source sending fewer frames than it needs is logged once."""
        assert self.whole_frames is not None
        fps = self.whole_frames.fps
        if self._next_keep_t > 0 and t - self._next_keep_t >= 1 / fps - 1e-6:  # a grid time passed unkept
            self.missed_whole_frames += int((t - self._next_keep_t + 1e-6) * fps)
            if not self._warned_whole_frames:
                self._warned_whole_frames = True
                log.warning(
                    "%s: no frame for the visual encoder between %.2f and %.2f s: the video comes at fewer than "
                    "emotion.llm.projector_fps = %g frames a second (counted in missed_whole_frames)",
                    self._name,
                    self._next_keep_t,
                    t,
                    fps,
                )
        self._next_keep_t = next_grid_time(self._next_keep_t, t, fps)

    def close(self) -> None:
        """This participant no longer takes a share (once, however often it is called)."""
        if self._counted:
            self._counted = False
            with FrameSampler._live_lock:
                FrameSampler._live -= 1
