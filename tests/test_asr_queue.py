"""The transcription queue: a backlog never blocks the event loop, and no utterance is dropped."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from model.audio.whisper import Transcript, make_transcriber
from stream.config import AsrSettings
from stream.transcribe.asr_service import TranscriptionService


class GatedTranscriber:
    """Stands in for a model that is slower than the speech arriving: blocks until released."""

    name = "gated"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.order: list[float] = []

    def transcribe(self, pcm: np.ndarray, t_offset: float, words: bool = True) -> Transcript:
        self.gate.wait(10)
        self.order.append(t_offset)
        return Transcript(text=f"utterance at {t_offset}", words=(), lang="en")


async def test_backlog_keeps_the_loop_responsive_and_drops_nothing() -> None:
    transcriber = GatedTranscriber()
    service = TranscriptionService(transcriber, workers=1, queue_size=2)
    pcm = np.zeros(16_000, np.float32)
    jobs = [asyncio.create_task(service.transcribe(pcm, float(i))) for i in range(10)]  # 5x the queue

    # the loop keeps running other work while every job waits on the model: 20 turns of another task complete
    async def other_work() -> int:
        turns = 0
        while turns < 20:
            await asyncio.sleep(0)
            turns += 1
        return turns

    assert await asyncio.wait_for(other_work(), 10) == 20
    assert not any(job.done() for job in jobs)
    assert service.backlog == 2

    transcriber.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*jobs), 10)
    assert [r.text for r in results] == [f"utterance at {float(i)}" for i in range(10)]
    assert transcriber.order == [float(i) for i in range(10)]
    await service.close()


async def test_a_failing_transcription_is_reported_to_its_caller_only() -> None:
    class Broken:
        name = "broken"

        def transcribe(self, pcm: np.ndarray, t_offset: float, words: bool = True) -> Transcript:
            if t_offset == 1.0:
                raise RuntimeError("model crashed")
            return Transcript(text="ok", words=(), lang="en")

    service = TranscriptionService(Broken(), workers=1, queue_size=4)
    pcm = np.zeros(1600, np.float32)
    outcomes = await asyncio.gather(
        *(service.transcribe(pcm, float(i)) for i in range(3)), return_exceptions=True
    )
    assert isinstance(outcomes[1], RuntimeError)
    assert [o.text for o in (outcomes[0], outcomes[2])] == ["ok", "ok"]  # type: ignore[union-attr]
    await service.close()


def test_the_transcriber_is_chosen_by_the_configured_backend() -> None:
    """audio.asr.backend is read: a backend the config's validation would refuse is refused here too."""
    unvalidated = AsrSettings.model_construct(backend="whisper.cpp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"audio\.asr\.backend.*whisper\.cpp"):
        make_transcriber(unvalidated)


class GatedBatchTranscriber(GatedTranscriber):
    """A batch-capable model: records the t_offsets of each call, one by one or as a batch."""

    name = "gated-batch"

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[float]] = []

    def transcribe(self, pcm: np.ndarray, t_offset: float, words: bool = True) -> Transcript:
        self.calls.append([t_offset])
        return super().transcribe(pcm, t_offset, words)

    def transcribe_batch(self, jobs: list[tuple[np.ndarray, float]], words: bool = True) -> list[Transcript]:
        self.gate.wait(10)
        self.calls.append([t for _, t in jobs])
        return [Transcript(text=f"utterance at {t}", words=(), lang="en") for _, t in jobs]


async def test_transcriptions_waiting_together_share_one_batch_in_queue_order() -> None:
    transcriber = GatedBatchTranscriber()
    service = TranscriptionService(transcriber, workers=1, queue_size=16, batch=4)
    pcm = np.zeros(1600, np.float32)
    first = asyncio.create_task(service.transcribe(pcm, 0.0))
    while service.idle:  # the worker has taken the first job and waits on the model
        await asyncio.sleep(0.01)
    waiting = [asyncio.create_task(service.transcribe(pcm, float(i))) for i in range(1, 7)]
    early = asyncio.create_task(service.transcribe(pcm, 99.0))  # an early transcription its caller drops
    while service.backlog < 7:
        await asyncio.sleep(0.01)
    early.cancel()
    transcriber.gate.set()
    results = await asyncio.wait_for(asyncio.gather(first, *waiting), 10)
    assert [r.text for r in results] == [f"utterance at {float(i)}" for i in range(7)]
    # the first alone (nothing else waited), then four together, then what was left (the cancelled one skipped)
    assert transcriber.calls == [[0.0], [1.0, 2.0, 3.0, 4.0], [5.0, 6.0]]
    await service.close()


async def test_a_batch_of_one_or_a_transcriber_without_batches_goes_one_by_one() -> None:
    for transcriber, batch in ((GatedBatchTranscriber(), 1), (GatedTranscriber(), 8)):
        service = TranscriptionService(transcriber, workers=1, queue_size=16, batch=batch)
        transcriber.gate.set()
        pcm = np.zeros(1600, np.float32)
        results = await asyncio.gather(*(service.transcribe(pcm, float(i)) for i in range(4)))
        assert [r.text for r in results] == [f"utterance at {float(i)}" for i in range(4)]
        assert transcriber.order == [float(i) for i in range(4)]
        await service.close()
