"""Transcription jobs of every call → a bounded queue served by worker threads (the event loop never waits on ASR),
those waiting together in batches where the transcriber can; interim transcripts, with an interim transcriber, →
its own worker: at most one waiting per speaker, newest wins."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from model.audio.vad import SAMPLE_RATE
from model.audio.whisper import Transcriber, Transcript
from stream import metrics

Job = tuple[np.ndarray, float, bool, "asyncio.Future[Transcript]"]  # (pcm, t_offset, words, result)


class BatchTranscriber(Transcriber, Protocol):
    def transcribe_batch(
        self, jobs: Sequence[tuple[np.ndarray, float]], words: bool = True
    ) -> list[Transcript]: ...


class TranscriptionService:
    """Shared by every call: a bounded queue of jobs served by worker threads.

    A full queue makes the submitting session wait in its own transcription task, never in the media path,
    so a backlog delays transcripts but neither VAD nor other calls, and no closed utterance is dropped.

    With an `interim` transcriber (Moonshine: cheap, text only), interim transcripts of speech still going on
    run on a worker thread of their own: they never wait behind closing transcripts, nor these behind them.
    That worker keeps at most one interim waiting per speaker (`key`): a newer one takes the older one's place
    in line, and the older one's caller gets None (skipped, the caller counts it).

    With `batch` > 1 and a transcriber that has `transcribe_batch`, a worker takes the jobs waiting when it is
    free, up to `batch` of them in queue order, and transcribes them together (one encoder pass)."""

    def __init__(
        self,
        transcriber: Transcriber,
        *,
        interim: Transcriber | None = None,
        workers: int = 1,
        queue_size: int = 16,
        batch: int = 1,
    ) -> None:
        self.transcriber = transcriber
        self._batch = batch if hasattr(transcriber, "transcribe_batch") else 1
        self.interim_transcriber = interim
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="asr")
        self._queue: asyncio.Queue[Job] = asyncio.Queue(queue_size)
        self._running = 0  # jobs in the workers now
        self.interim_seconds = 0.0  # recent compute time of an interim (text only) transcription, smoothed
        self._workers = [asyncio.create_task(self._serve()) for _ in range(workers)]
        self._interim_executor: ThreadPoolExecutor | None = None
        # speaker → its one interim waiting for the interim worker (pcm, t_offset, result); in arrival order
        self._interim_waiting: dict[
            Hashable, tuple[np.ndarray, float, asyncio.Future[Transcript | None]]
        ] = {}
        self._interim_arrived = asyncio.Event()
        if interim is not None:
            self._interim_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr-interim")
            self._workers.append(asyncio.create_task(self._serve_interim(self._interim_executor)))

    @property
    def interim_separate(self) -> bool:
        """Interim transcripts have their own transcriber and worker (transcribe_interim)."""
        return self.interim_transcriber is not None

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

    async def transcribe_interim(self, key: Hashable, pcm: np.ndarray, t_offset: float) -> Transcript | None:
        """An interim transcript (text only) by the interim transcriber; None when a newer one of the same `key`
        replaced it before the interim worker took it. Only with an interim transcriber."""
        assert self.interim_transcriber is not None, "no interim transcriber: use transcribe(words=False)"
        done: asyncio.Future[Transcript | None] = asyncio.get_running_loop().create_future()
        older = self._interim_waiting.get(key)
        if older is not None and not older[2].done():
            older[2].set_result(None)
        self._interim_waiting[key] = (pcm, t_offset, done)  # an older one's place in line, if it had one
        self._interim_arrived.set()
        return await done

    async def _serve_interim(self, executor: ThreadPoolExecutor) -> None:
        assert self.interim_transcriber is not None
        transcribe = self.interim_transcriber.transcribe
        loop = asyncio.get_running_loop()
        while True:
            await self._interim_arrived.wait()
            if not self._interim_waiting:
                self._interim_arrived.clear()
                continue
            key = next(iter(self._interim_waiting))
            pcm, t_offset, done = self._interim_waiting.pop(key)
            if done.done():
                continue  # replaced, or its caller no longer needs it (its utterance closed)
            try:
                result = await loop.run_in_executor(executor, transcribe, pcm, t_offset, False)
            except Exception as exc:
                if not done.done():
                    done.set_exception(exc)
                continue
            self._account(pcm, result, interim=True)
            if not done.done():
                done.set_result(result)

    async def _serve(self) -> None:
        while True:
            jobs = [await self._queue.get()]
            while len(jobs) < self._batch and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            metrics.ASR_BACKLOG.set(self._queue.qsize())
            # a cancelled one's caller no longer needs it (an early transcription whose pause did not close)
            jobs = [job for job in jobs if not job[3].cancelled()]
            for words in (True, False):  # closing transcripts first; one batch of each kind
                if same := [job for job in jobs if job[2] is words]:
                    await self._run(same, words)

    async def _run(self, jobs: list[Job], words: bool) -> None:
        loop = asyncio.get_running_loop()
        self._running += len(jobs)
        try:
            if len(jobs) == 1:
                pcm, t_offset = jobs[0][:2]
                results = [
                    await loop.run_in_executor(
                        self._executor, self.transcriber.transcribe, pcm, t_offset, words
                    )
                ]
            else:
                batched: BatchTranscriber = self.transcriber  # type: ignore[assignment]
                pairs = [(pcm, t_offset) for pcm, t_offset, _, _ in jobs]
                results = await loop.run_in_executor(self._executor, batched.transcribe_batch, pairs, words)
                metrics.ASR_BATCH.observe(len(jobs))
        except Exception as exc:  # handed to the callers, who report it as an error event
            for *_, done in jobs:
                if not done.done():
                    done.set_exception(exc)
            return
        finally:
            self._running -= len(jobs)
        for (pcm, _, _, done), result in zip(jobs, results, strict=True):
            self._account(pcm, result, interim=not words)
            if not done.done():
                done.set_result(result)

    def _account(self, pcm: np.ndarray, result: Transcript, *, interim: bool) -> None:
        """Metrics of one transcription done; an interim's compute time also feeds `interim_seconds`."""
        metrics.ASR_COMPUTE.observe(result.seconds)
        metrics.ASR_AUDIO.inc(len(pcm) / SAMPLE_RATE)
        if interim:
            seen = self.interim_seconds or result.seconds
            self.interim_seconds = 0.8 * seen + 0.2 * result.seconds

    async def close(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._interim_executor is not None:
            self._interim_executor.shutdown(wait=False, cancel_futures=True)
