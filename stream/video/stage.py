"""One participant's video: frames sampled at analysis_fps → a worker thread → faces → micro-expression buffer."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

import av
import numpy as np

from stream import metrics
from stream.config import VideoSettings
from stream.video.faces import FaceAnalyzer, FaceTracker, make_face_analyzer, speaking_track
from stream.video.micro import FaceWindow, MicroExpressionBuffer

log = logging.getLogger(__name__)


class VideoAnalysis:
    """The event loop only samples and enqueues frames; decoding to RGB and every model run happen in the
    worker. When the worker falls behind, the oldest queued frames are dropped and counted."""

    def __init__(self, settings: VideoSettings, name: str) -> None:
        self._settings = settings
        self._analyzer: FaceAnalyzer = make_face_analyzer(
            settings.backend, settings.model_path, settings.num_faces
        )
        self._tracker = FaceTracker(track_ttl_s=settings.track_ttl_s)
        self.buffer = MicroExpressionBuffer(
            buffer_s=settings.buffer_s,
            micro_max_ms=settings.micro.max_ms,
            baseline_s=settings.micro.baseline_s,
            min_amplitude=settings.micro.min_amplitude,
            open_z=settings.micro.open_z,
        )
        self._queue: deque[tuple[av.VideoFrame, float]] = deque()
        self._wake = threading.Condition()
        self._next_sample_t = 0.0
        self._stopped = False
        self.analysed_until = -1.0  # media time of the last frame the worker finished
        self.dropped = 0
        self._thread = threading.Thread(target=self._work, name=f"video-{name}", daemon=True)
        self._thread.start()

    def offer(self, frame: av.VideoFrame, t: float) -> None:
        """Called on the event loop for every received frame; keeps one per 1/analysis_fps."""
        if t + 1e-6 < self._next_sample_t:
            return
        self._next_sample_t = max(self._next_sample_t + 1 / self._settings.analysis_fps, t)
        with self._wake:
            if len(self._queue) >= self._settings.queue_frames:
                self._queue.popleft()
                self.dropped += 1
                metrics.DROPPED_FRAMES.inc()
            self._queue.append((frame, t))
            self._wake.notify()

    @property
    def idle(self) -> bool:
        return not self._queue

    @property
    def backlog(self) -> int:
        return len(self._queue)

    def window(self, t0: float, t1: float, speech_t: np.ndarray, speech_prob: np.ndarray) -> FaceWindow:
        """Face evidence of the speaking face over [t0, t1] (the track whose mouth follows the VAD)."""
        tracks = self.buffer.tracks(t0, t1)
        track = None
        if len(tracks) > 1:
            mouths = {k: self.buffer.mouth_series(k, t0, t1) for k in tracks}
            track = speaking_track(mouths, speech_t, speech_prob)
        return self.buffer.window(t0, t1, track)

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._stopped:
                    self._wake.wait()
                if self._stopped:
                    return
                frame, t = self._queue.popleft()
            started = time.perf_counter()
            try:
                self._analyse(frame, t)
            except Exception:
                log.exception("face analysis failed at t=%.2f", t)
            metrics.STAGE_SECONDS.labels("faces").observe(time.perf_counter() - started)
            self.analysed_until = t

    def _analyse(self, frame: av.VideoFrame, t: float) -> None:
        width = self._settings.max_width
        if frame.width > width:  # analysis needs no more than this; saves most of the landmarker's time
            frame = frame.reformat(width=width, height=round(frame.height * width / frame.width))
        rgb = frame.to_ndarray(format="rgb24")
        self.buffer.mark_frame(t)
        for face in self._tracker.update(self._analyzer.analyze(rgb, t), t):
            self.buffer.push(face)

    def close(self) -> None:
        with self._wake:
            self._stopped = True
            self._queue.clear()
            self._wake.notify()
        self._thread.join(timeout=5)
        self._analyzer.close()
