"""Transcription jobs of every call → a bounded queue served by worker threads (the event loop never waits on ASR)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from model.audio.vad import SAMPLE_RATE
from model.audio.whisper import Transcriber, Transcript
from stream import metrics


class TranscriptionService:
    """Shared by every call: a bounded queue of jobs served by worker threads.

    A full queue makes the submitting session wait in its own transcription task, never in the media path,
    so a backlog delays transcripts but neither VAD nor other calls, and no closed utterance is dropped."""

    def __init__(self, transcriber: Transcriber, *, workers: int = 1, queue_size: int = 16) -> None:
        self.transcriber = transcriber
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="asr")
        self._queue: asyncio.Queue[tuple[np.ndarray, float, bool, asyncio.Future[Transcript]]]
        self._queue = asyncio.Queue(queue_size)
        self._running = 0  # jobs in the workers now
        self.interim_seconds = 0.0  # recent compute time of an interim (text only) transcription, smoothed
        self._workers = [asyncio.create_task(self._serve()) for _ in range(workers)]

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    @property
    def idle(self) -> bool:
        """Nothing waiting and nothing running: an interim transcription now delays no closed utterance."""
        return self._queue.empty() and self._running == 0

    async def transcribe(self, pcm: np.ndarray, t_offset: float, words: bool = True) -> Transcript:
        done: asyncio.Future[Transcript] = asyncio.get_running_loop().create_future()
        await self._queue.put((pcm, t_offset, words, done))
        metrics.ASR_BACKLOG.set(self._queue.qsize())
        return await done

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            pcm, t_offset, words, done = await self._queue.get()
            metrics.ASR_BACKLOG.set(self._queue.qsize())
            if done.cancelled():
                continue  # its caller no longer needs it (an early transcription whose pause did not close)
            self._running += 1
            try:
                result = await loop.run_in_executor(
                    self._executor, self.transcriber.transcribe, pcm, t_offset, words
                )
            except Exception as exc:  # handed to the caller, who reports it as an error event
                if not done.done():
                    done.set_exception(exc)
            else:
                metrics.ASR_COMPUTE.observe(result.seconds)
                if not words:
                    seen = self.interim_seconds or result.seconds
                    self.interim_seconds = 0.8 * seen + 0.2 * result.seconds
                metrics.ASR_AUDIO.inc(len(pcm) / SAMPLE_RATE)
                if not done.done():
                    done.set_result(result)
            finally:
                self._running -= 1

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)
