"""aiortc audio frames (any rate, layout, format) → 16 kHz mono float32 chunks stamped with media time."""

from __future__ import annotations

import av
import numpy as np

from model.audio.vad import SAMPLE_RATE, PcmChunk

# A jump in the frames' pts larger than this is a gap in the stream (packet loss, a muted sender):
# it is filled with silence so that media time keeps matching the sample count.
_GAP_TOLERANCE_S = 0.06
_MAX_GAP_FILL_S = 5.0


class Resampler:
    """Converts one track's frames to 16 kHz mono; media time counts from the track's first frame."""

    def __init__(self, t_offset: float = 0.0) -> None:
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        self._t_offset = t_offset
        self._first_pts_s: float | None = None
        self._next_in_s = 0.0  # where the next input frame is expected, track time
        self._samples_out = 0

    def push(self, frame: av.AudioFrame) -> list[PcmChunk]:
        chunks: list[PcmChunk] = []
        t_in = self._input_time(frame)
        if t_in - self._next_in_s > _GAP_TOLERANCE_S:
            gap = min(t_in - self._next_in_s, _MAX_GAP_FILL_S)
            chunks.append(self._emit(np.zeros(round(gap * SAMPLE_RATE), dtype=np.float32)))
        self._next_in_s = max(self._next_in_s, t_in) + frame.samples / frame.sample_rate
        for out in self._resampler.resample(frame):
            chunks.append(self._emit(out.to_ndarray().reshape(-1).astype(np.float32, copy=False)))
        return chunks

    def _input_time(self, frame: av.AudioFrame) -> float:
        if frame.pts is None or frame.time_base is None:
            return self._next_in_s
        pts_s = float(frame.pts * frame.time_base)
        if self._first_pts_s is None:
            self._first_pts_s = pts_s
        return pts_s - self._first_pts_s

    def _emit(self, samples: np.ndarray) -> PcmChunk:
        chunk = PcmChunk(self._t_offset + self._samples_out / SAMPLE_RATE, samples)
        self._samples_out += len(samples)
        return chunk
