"""The stages once the server stops waiting for the models (Cutoff, issue 23), fed frames directly: an utterance
waiting on the ASR is delivered untranscribed, without face or emotion, with an error saying why."""

from __future__ import annotations

import asyncio
import logging
import threading

import numpy as np

from stream.frames import ClosedUtterance, EndOfStream, ScoredUtterance, Transcript
from stream.pipeline import Cutoff, CutShort, ParticipantContext
from stream.transcribe.asr_service import TranscriptionService
from stream.transcribe.transcribe import Transcribe
from tests.test_pipeline import Collect, Events


class StuckTranscriber:
    """An ASR far behind: it answers only when told to."""

    name = "stuck"

    def __init__(self) -> None:
        self.release = threading.Event()

    def transcribe(self, pcm: np.ndarray, t_offset: float, words: bool = True) -> Transcript:
        self.release.wait(30)
        return Transcript(text="too late", words=(), lang="en")


def scored(index: int) -> ScoredUtterance:
    pcm = np.zeros(16_000, np.float32)
    utterance = ClosedUtterance(index, 1.0 + index, 2.0 + index, pcm, 0.8 + index, "silence")
    return ScoredUtterance(utterance, np.zeros(0), np.zeros(0))


async def test_race_gives_the_result_before_the_cut_and_cut_short_after() -> None:
    cutoff = Cutoff()
    assert await cutoff.race(asyncio.sleep(0, "done")) == "done"
    pending = asyncio.get_running_loop().create_future()
    racing = asyncio.create_task(cutoff.race(pending))
    await asyncio.sleep(0)
    cutoff.cut("stopping")
    try:
        await racing
        raise AssertionError("the race should have been cut short")
    except CutShort as exc:
        assert str(exc) == "stopping"
    assert pending.cancelled()


async def test_utterances_waiting_on_the_asr_at_the_cut_are_delivered_untranscribed() -> None:
    events, transcriber, cutoff = Events(), StuckTranscriber(), Cutoff()
    log = logging.LoggerAdapter(logging.getLogger("test"), {"call": "call-1", "participant": "alice"})
    context = ParticipantContext("call-1", "alice", events.context().clock, events.hub.publish, log, cutoff)
    asr = TranscriptionService(transcriber)
    collect = Collect()
    transcribe = Transcribe(context, asr)
    transcribe.then(collect)
    try:
        for index in range(3):
            await transcribe.process(scored(index))
        ending = asyncio.create_task(transcribe.process(EndOfStream()))
        await asyncio.sleep(0.1)
        assert not ending.done()  # the end of the stream waits for the transcripts ...
        cutoff.cut("shutdown_timeout_s passed")
        await ending  # ... until the cut
    finally:
        transcriber.release.set()
        await asr.close()

    utterances = events.of_type("utterance")
    assert [u["utterance"] for u in utterances] == ["alice-0", "alice-1", "alice-2"]
    assert all((u["transcribed"], u["text"], u["words"]) == (False, "", []) for u in utterances)
    errors = events.of_type("error")
    assert [(e["code"], e["utterance"]) for e in errors] == [
        ("not_transcribed", f"alice-{i}") for i in range(3)
    ]
    assert "shutdown_timeout_s passed" in errors[0]["message"]
    assert collect.frames == [EndOfStream()]  # nothing for the face and emotion stages to wait on
