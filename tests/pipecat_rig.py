"""A real pipecat pipeline around a processor, for tests and benchmarks: a source that plays speech as a
transport's input does (InputAudioRawFrame chunks of 20 ms at 16 kHz, in real time, then silence like an open
microphone, with a TextFrame marker now and then, and camera images at 10 fps when given), and a sink that records every frame and when it came."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import numpy as np
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InputImageRawFrame,
    StartFrame,
    TextFrame,
    UserAudioRawFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from tests.harness import wait_until
from tests.media import SPEECH_RATE

CHUNK_S = 0.02
MARKER_EVERY = 25  # chunks
IMAGE_EVERY = 5  # chunks: 10 fps


class SpeechSource(FrameProcessor):
    """Plays `samples` (16 kHz float32) once in real time, then silence until the pipeline ends; with `image`
    ((H, W, 3) uint8 RGB), a camera showing it; with `user_id`, as that user of a transport with several
    (UserAudioRawFrame). Passes on the frames of sources before it."""

    def __init__(
        self, samples: np.ndarray, image: np.ndarray | None = None, user_id: str | None = None
    ) -> None:
        super().__init__()
        self._pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
        self._image = image
        self._user_id = user_id
        self.pushed: list[Frame] = []  # every frame it made, in the order pushed
        self.started_at: float | None = None  # monotonic time the first chunk was pushed
        self.upstream: list[Frame] = []  # frames that came back up to it (errors)
        self._task: asyncio.Task[None] | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.UPSTREAM:
            self.upstream.append(frame)
            return
        if isinstance(frame, (EndFrame, CancelFrame)) and self._task is not None:
            await self.cancel_task(self._task)
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self._task = self.create_task(self._play(), "speech-source")

    def wall_time(self, media_s: float) -> float:
        """The monotonic time at which the audio at `media_s` was pushed."""
        assert self.started_at is not None
        return self.started_at + media_s

    async def _play(self) -> None:
        step = round(SPEECH_RATE * CHUNK_S)
        self.started_at = time.monotonic()
        index = 0
        while True:
            chunk = self._pcm[index * step : (index + 1) * step]
            chunk = np.pad(chunk, (0, step - len(chunk)))  # past the end: silence
            frame = (
                InputAudioRawFrame(audio=chunk.tobytes(), sample_rate=SPEECH_RATE, num_channels=1)
                if self._user_id is None
                else UserAudioRawFrame(
                    audio=chunk.tobytes(), sample_rate=SPEECH_RATE, num_channels=1, user_id=self._user_id
                )
            )
            self.pushed.append(frame)
            await self.push_frame(frame)
            if self._image is not None and index % IMAGE_EVERY == 0:
                height, width = self._image.shape[:2]
                image = InputImageRawFrame(image=self._image.tobytes(), size=(width, height), format="RGB")
                self.pushed.append(image)
                await self.push_frame(image)
            index += 1
            if index % MARKER_EVERY == 0:
                marker = TextFrame(text=f"marker {index}")
                self.pushed.append(marker)
                await self.push_frame(marker)
            await asyncio.sleep(max(0.0, self.started_at + index * CHUNK_S - time.monotonic()))


class Collector(FrameProcessor):
    """The last processor: records every downstream frame with its arrival (monotonic) time."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[Frame] = []
        self.arrivals: list[float] = []
        self._arrived = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            self.frames.append(frame)
            self.arrivals.append(time.monotonic())
            self._arrived.set()
        await self.push_frame(frame, direction)

    def of_type(self, kind: type[Frame]) -> list[Frame]:
        return [f for f in self.frames if isinstance(f, kind)]

    async def wait_until(self, condition: Callable[[Collector], bool], timeout: float) -> None:
        await wait_until(
            lambda: condition(self),
            self._arrived,
            timeout,
            lambda: f"not reached in {timeout} s; got {[type(f).__name__ for f in self.frames[-20:]]}",
        )


async def run_pipeline(
    processors: list[FrameProcessor], until: Callable[[], Awaitable[object]], **worker_args: object
) -> PipelineWorker:
    """Runs Pipeline(processors) with a PipelineWorker and a WorkerRunner until the coroutine `until()` returns,
    then ends it with an EndFrame (and waits for the end); if `until` raises, cancels the pipeline and re-raises."""
    worker = PipelineWorker(Pipeline(processors), enable_rtvi=False, idle_timeout_secs=None, **worker_args)  # type: ignore[arg-type]
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    try:
        await until()
    except BaseException:
        await worker.cancel()
        await running
        raise
    await worker.queue_frame(EndFrame())
    await asyncio.wait_for(running, 30)
    return worker
