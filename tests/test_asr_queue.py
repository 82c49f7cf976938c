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
