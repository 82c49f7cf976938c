"""One participant's sampled video frames → a worker thread → tracked faces → micro-expression buffer → face windows."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from model.face.landmarks import (
    FaceAnalyzer,
    FaceTracker,
    choose_speaker,
    make_face_analyzer,
    release_freed_memory,
)
from model.face.micro import FaceWindow, MicroExpressionBuffer
from stream import metrics
from stream.config import VideoSettings
from stream.faces.face_process import FaceProcesses
from stream.faces.sampling import FrameSampler, WholeFrames
from stream.overload import Shedder
from stream.threads import name_this_thread

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Sampled:
    """A frame waiting for the worker: analysed for faces, kept whole for the visual encoder, or both."""

    frame: av.VideoFrame
    t: float
    keep: bool  # a whole frame for the visual encoder
    analyse: bool = True  # False once a backlog dropped its analysis (a kept frame is never dropped)


class FaceHealth:
    """Face-analysis failures in this process, for /healthz: a participant whose analysis failed keeps the stage
    degraded until it leaves (a broken model fails every frame; one odd frame still deserves a look)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.failures = 0  # frames whose analysis raised, since start (also in /metrics)
        self.failing = 0  # participants still here whose analysis failed at least once
        self.last_error: str | None = None

    def failed(self, message: str, *, first: bool) -> None:
        metrics.FACE_FAILURES.inc()
        with self._lock:
            self.failures += 1
            self.failing += int(first)
            self.last_error = message

    def left(self) -> None:
        """A participant whose analysis failed has left."""
        with self._lock:
            self.failing -= 1

    def health(self, backend: str) -> dict[str, Any]:
        with self._lock:
            state = "degraded" if self.failing else "ready"
            return {
                "state": state,
                "backend": backend,
                "failures": self.failures,
                "last_error": self.last_error,
            }


FACE_HEALTH = FaceHealth()


class VideoAnalysis:
    """The event loop only samples (stream/faces/sampling.py) and enqueues frames; decoding to RGB and every model
    run happen in the worker. When the worker falls behind, the oldest queued frames are dropped and counted.

    The worker is not niced (a niced thread holding the GIL stalls the event loop). With `processes` the face
    models (and each face's signals) run in a child process (stream/faces/face_process.py) at `nice`, and the
    worker only converts frames, tracks faces and fills the buffer.

    Whole frames kept for the visual encoder go into the buffer downsized, for the same buffer_s, and are never
    dropped with a backlog (they only lose their analysis): an utterance's FaceWindow carries them to the encoder.

    A frame whose analysis raises is skipped, counted (`failures`, `health`, /metrics) and logged; at the first
    one, `on_failure(message)` is called from the worker thread, so that the participant hears of it once.
    """

    def __init__(
        self,
        settings: VideoSettings,
        name: str,
        whole_frames: WholeFrames | None = None,
        on_failure: Callable[[str], None] | None = None,
        health: FaceHealth = FACE_HEALTH,
        shedder: Shedder | None = None,
        processes: FaceProcesses | None = None,
    ) -> None:
        self._settings = settings
        self._processes = processes
        self._name = name
        self._on_failure = on_failure
        self._health = health
        self.failures = 0  # frames whose analysis raised
        self._analyzer: FaceAnalyzer | None = None
        ready = threading.Event()
        failure: list[BaseException] = []
        self._tracker = FaceTracker(track_ttl_s=settings.track_ttl_s)
        self.buffer = MicroExpressionBuffer(settings.buffer_s, settings.micro)
        self._queue: deque[_Sampled] = deque()
        self._wake = threading.Condition()
        self._stopped = False
        self._closed = False
        self.analysed_until = -1.0  # media time of the last frame the worker finished
        self.dropped = 0
        # The analyzer is made in the worker, after its niceness is set, so the threads it starts inherit it.
        self._thread = threading.Thread(
            target=self._work, args=(ready, failure), name=f"video-{name}", daemon=True
        )
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        self.sampler = FrameSampler(settings, name, whole_frames, shedder)

    @property
    def fps(self) -> float:
        return self.sampler.fps

    @property
    def shed(self) -> int:
        return self.sampler.shed

    @property
    def missed_whole_frames(self) -> int:
        return self.sampler.missed_whole_frames

    def offer(self, frame: av.VideoFrame, t: float) -> None:
        """Called on the event loop for every received frame: a sampled one is queued for the worker."""
        sample = self.sampler.sample(t)
        if sample is None:
            return
        with self._wake:
            if (
                sample.analyse
                and sum(1 for item in self._queue if item.analyse) >= self._settings.queue_frames
            ):
                self._drop_oldest_analysis()
            self._queue.append(_Sampled(frame, t, sample.keep, sample.analyse))
            self._wake.notify()

    def _drop_oldest_analysis(self) -> None:  # under self._wake
        oldest = next(item for item in self._queue if item.analyse)
        if oldest.keep:
            oldest.analyse = False  # its whole frame still reaches the buffer, without a face
        else:
            self._queue.remove(oldest)
        self.dropped += 1
        metrics.DROPPED_FRAMES.inc()

    @property
    def idle(self) -> bool:
        return not self._queue

    @property
    def backlog(self) -> int:
        return len(self._queue)

    def listener_window(self, t0: float, t1: float) -> FaceWindow:
        """Face evidence of the face seen most over [t0, t1]: a listener's, who need not speak."""
        return self.buffer.window(t0, t1)

    def window(self, t0: float, t1: float, speech_t: np.ndarray, speech_prob: np.ndarray) -> FaceWindow:
        """Face evidence of the speaking face over [t0, t1] (chosen as for training clips: choose_speaker)."""
        mouths = {k: self.buffer.mouth_series(k, t0, t1) for k in self.buffer.tracks(t0, t1)}
        return self.buffer.window(t0, t1, choose_speaker(mouths, speech_t, speech_prob))

    def _work(self, ready: threading.Event, failure: list[BaseException]) -> None:
        try:
            name_this_thread("face-analysis")
            if self._processes is not None:
                self._analyzer = self._processes.analyzer()
            else:
                self._analyzer = make_face_analyzer(
                    self._settings.backend, self._settings.model_path, self._settings.num_faces
                )
        except BaseException as exc:  # handed to the constructor, which raises it
            failure.append(exc)
            return
        finally:
            ready.set()
        while True:
            with self._wake:
                while not self._queue and not self._stopped:
                    self._wake.wait()
                if self._stopped:
                    return
                item = self._queue.popleft()
            started = time.perf_counter()
            try:
                self._analyse(item)
            except Exception as exc:
                self._failed(exc, item.t)
            metrics.STAGE_SECONDS.labels("faces").observe(time.perf_counter() - started)
            self.analysed_until = item.t

    def _analyse(self, item: _Sampled) -> None:
        frame, t = item.frame, item.t
        whole_frames = self.sampler.whole_frames
        if item.keep and whole_frames is not None:
            size = whole_frames.size
            # From the full frame, squashed to a square, as model/training/clip_features.py makes training clips
            self.buffer.keep_frame(t, frame.to_ndarray(format="rgb24", width=size, height=size))
        if not item.analyse:
            return
        width = self._settings.max_width
        if frame.width > width:  # analysis needs no more than this; saves most of the landmarker's time
            frame = frame.reformat(width=width, height=round(frame.height * width / frame.width))
        rgb = frame.to_ndarray(format="rgb24")
        self.buffer.mark_frame(t)
        assert self._analyzer is not None  # made before the worker takes frames
        for face in self._tracker.update(self._analyzer.analyze(rgb, t), t):
            self.buffer.push(face)

    def _failed(self, exc: Exception, t: float) -> None:
        first = self.failures == 0
        self.failures += 1
        message = f"face analysis failed at t={t:.2f} s: {exc!r}"
        self._health.failed(message, first=first)
        if not first:  # the first is logged with its traceback; the rest are counted, and summed up at close
            return
        log.exception("%s: %s", self._name, message)
        if self._on_failure is not None:
            try:
                self._on_failure(message)
            except Exception:
                log.exception("%s: reporting the face-analysis failure failed", self._name)

    def close(self) -> None:
        with self._wake:
            self._stopped = True
            self._queue.clear()
            self._wake.notify()
        self._thread.join(timeout=5)
        if not self._closed:  # once, however often close is called
            self._closed = True
            self.sampler.close()
            if self.failures:
                log.warning("%s: face analysis failed on %d frames", self._name, self.failures)
                self._health.left()
        if self._analyzer is not None:
            self._analyzer.close()
            self._analyzer = None
        release_freed_memory()
