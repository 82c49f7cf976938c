"""Micro-batching across calls: one asyncio front end gathers every call's requests into batches for a reasoner."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass

from model.llm.messages import EmotionReasoner, ReasoningRequest, ReasoningResult
from model.settings import LLMSettings

logger = logging.getLogger(__name__)


class BatcherClosedError(RuntimeError):
    """The micro-batcher was closed before this request was answered."""


@dataclass(frozen=True, slots=True)
class BatcherStats:
    batches: int  # batches run, failed ones included
    requests: int  # requests sent to the reasoner
    failed_batches: int  # batches whose reasoner call raised
    queued: int  # requests waiting now

    @property
    def mean_batch_size(self) -> float:
        return self.requests / self.batches if self.batches else 0.0


@dataclass(slots=True)
class _Waiting:
    request: ReasoningRequest
    future: asyncio.Future[ReasoningResult]
    arrived: float  # event-loop time


class MicroBatcher:
    """Asyncio front end shared by all calls: gathers requests into batches and runs them in a worker thread.

    A batch closes when `max_batch` requests wait or `max_wait_ms` passed since its first one arrived. One
    batch runs at a time (one model, one accelerator); requests arriving meanwhile form the next batch.
    """

    def __init__(self, reasoner: EmotionReasoner, max_batch: int = 8, max_wait_ms: float = 50.0) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_ms >= 0, got {max_batch}, {max_wait_ms}")
        self.reasoner = reasoner
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self._waiting: deque[_Waiting] = deque()
        self._running: list[_Waiting] = []
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-batch")
        self._serving: asyncio.Task[None] | None = None
        self._closed = False
        self._batches = self._requests = self._failed_batches = 0

    @classmethod
    def from_settings(cls, reasoner: EmotionReasoner, settings: LLMSettings) -> MicroBatcher:
        return cls(reasoner, settings.max_batch, settings.max_wait_ms)

    async def submit(self, request: ReasoningRequest) -> ReasoningResult:
        if self._closed:
            raise BatcherClosedError("the LLM batcher is closed")
        loop = asyncio.get_running_loop()
        waiting = _Waiting(request, loop.create_future(), loop.time())
        self._waiting.append(waiting)
        self._arrived.set()
        if self._serving is None:
            self._serving = asyncio.create_task(self._serve(), name="llm-micro-batcher")
        return await waiting.future

    @property
    def stats(self) -> BatcherStats:
        return BatcherStats(self._batches, self._requests, self._failed_batches, len(self._waiting))

    async def close(self) -> None:
        """Stop serving; requests not yet answered fail with BatcherClosedError. Waits for a running batch."""
        self._closed = True
        if self._serving is not None:
            self._serving.cancel()
            with suppress(asyncio.CancelledError):
                await self._serving
        error = BatcherClosedError("the LLM batcher closed before answering")
        for waiting in (*self._running, *self._waiting):
            if not waiting.future.done():
                waiting.future.set_exception(error)
        self._waiting.clear()
        # Waiting for the worker keeps a batch from holding the model (and GPU memory) after close returns.
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    async def _serve(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch:
                await self._run(batch)

    async def _next_batch(self) -> list[_Waiting]:
        while not self._waiting:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = self._waiting[0].arrived + self.max_wait_s
        loop = asyncio.get_running_loop()
        while len(self._waiting) < self.max_batch and (remaining := deadline - loop.time()) > 0:
            self._arrived.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        taken = [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]
        return [w for w in taken if not w.future.done()]  # a caller that gave up needs no answer

    async def _run(self, batch: list[_Waiting]) -> None:
        self._running = batch
        self._batches += 1
        self._requests += len(batch)
        requests = [w.request for w in batch]
        try:
            outcomes = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.reasoner.reason_batch, requests
            )
            if len(outcomes) != len(batch):
                raise RuntimeError(f"{self.reasoner.name} answered {len(outcomes)} of {len(batch)} requests")
        except Exception as error:
            self._failed_batches += 1
            calls = sorted({f"{r.call}/{r.utterance}" for r in requests})
            logger.exception(
                "LLM batch of %d failed (%s): %s", len(batch), self.reasoner.name, ", ".join(calls)
            )
            for waiting in batch:
                if not waiting.future.done():
                    waiting.future.set_exception(error)
        else:
            for waiting, outcome in zip(batch, outcomes, strict=True):
                if waiting.future.done():
                    continue
                if isinstance(outcome, Exception):
                    waiting.future.set_exception(outcome)
                else:
                    waiting.future.set_result(outcome)
        # Not in a finally: when close() cancels this batch mid-run, it fails the running futures itself.
        self._running = []
