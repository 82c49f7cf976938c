"""Interim transcripts on their own transcriber and worker: Moonshine tiny reads speech at a cost that follows its
length; interims and finals never wait behind each other; an interim the worker could not reach in time is
skipped and counted, never queued without bound."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from model.audio.moonshine import MIN_TOKENS, TOKENS_PER_S, MoonshineTranscriber, make_interim_transcriber
from model.audio.whisper import Transcript
from stream import metrics
from stream.config import AsrSettings, VadSettings
from stream.frames import EndOfStream
from stream.overload import Shedder
from stream.speech.segment import Segment
from stream.transcribe.asr_service import TranscriptionService
from stream.transcribe.transcribe import Transcribe
from tests.media import espeak, word_error_rate
from tests.test_pipeline import Collect, Events, RecordingTranscriber, feed_speech

SENTENCES = [
    "The weather was lovely this morning, so we walked to the market.",
    "Please call me back when you have finished reading the report.",
]


@pytest.fixture(scope="module")
def moonshine() -> MoonshineTranscriber:
    return MoonshineTranscriber()


def test_moonshine_transcribes_speech(moonshine: MoonshineTranscriber) -> None:
    for sentence in SENTENCES:
        transcript = moonshine.transcribe(espeak(sentence), 3.0, words=False)
        assert word_error_rate(sentence, transcript.text) <= 0.3, transcript.text
        assert transcript.words == () and transcript.voice is None and transcript.heard is None


def test_moonshine_work_follows_the_length_of_the_audio(moonshine: MoonshineTranscriber) -> None:
    """Whisper encodes a 30 s window whatever is said; Moonshine's encoder frames and decoded tokens grow with
    the speech (its compute follows them), so the growing interims of one turn cost what the turn holds."""
    speech = np.concatenate([espeak(s) for s in SENTENCES * 2])
    work = {}
    for seconds in (1.5, 3.0, 6.0, 12.0):
        moonshine.transcribe(speech[: round(seconds * 16_000)], 0.0, words=False)
        work[seconds] = moonshine.last_work()
    frames = {s: f for s, (f, _) in work.items()}
    assert frames[3.0] == pytest.approx(2 * frames[1.5], rel=0.05)
    assert frames[12.0] == pytest.approx(8 * frames[1.5], rel=0.05)
    # decoding stops at the end of the text, and at most at a cap that follows the length (a loop on a word cut
    # in half cannot run on)
    for seconds, (_, tokens) in work.items():
        assert tokens <= 1 + MIN_TOKENS + round(TOKENS_PER_S * seconds)
    assert work[12.0][1] >= 2 * work[3.0][1]


def test_the_interim_backend_is_chosen_by_config() -> None:
    assert make_interim_transcriber(AsrSettings(interim_backend="same")) is None
    assert isinstance(make_interim_transcriber(AsrSettings()), MoonshineTranscriber)
    unvalidated = AsrSettings.model_construct(interim_backend="vosk")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"audio\.asr\.interim_backend.*vosk"):
        make_interim_transcriber(unvalidated)


class Gated:
    """A transcriber that blocks until released, and says which calls it has started."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.gate = threading.Event()
        self.started: list[float] = []

    def transcribe(self, pcm: np.ndarray, t_offset: float, words: bool = True) -> Transcript:
        self.started.append(t_offset)
        self.gate.wait(10)
        return Transcript(text=f"{self.name} {t_offset}", words=(), lang="en")


async def until(condition: object) -> None:
    while not condition():  # type: ignore[operator]
        await asyncio.sleep(0.01)


async def test_a_final_never_waits_behind_an_interim_nor_an_interim_behind_a_final() -> None:
    final, interim = Gated("final"), Gated("interim")
    service = TranscriptionService(final, interim=interim)
    pcm = np.zeros(16_000, np.float32)
    stuck_interim = asyncio.create_task(service.transcribe_interim("alice", pcm, 1.0))
    await asyncio.wait_for(until(lambda: interim.started == [1.0]), 10)
    # the interim worker is blocked: a final is still taken at once (it then waits only on its own model)
    stuck_final = asyncio.create_task(service.transcribe(pcm, 2.0))
    await asyncio.wait_for(until(lambda: final.started == [2.0]), 10)
    final.gate.set()
    assert (await asyncio.wait_for(stuck_final, 10)).text == "final 2.0"
    assert not stuck_interim.done()
    interim.gate.set()
    assert (await asyncio.wait_for(stuck_interim, 10)).text == "interim 1.0"  # type: ignore[union-attr]

    # and the other way round: with the final worker blocked, an interim is served
    final.gate.clear()
    blocked = asyncio.create_task(service.transcribe(pcm, 3.0))
    await asyncio.wait_for(until(lambda: final.started == [2.0, 3.0]), 10)
    assert (await asyncio.wait_for(service.transcribe_interim("bob", pcm, 4.0), 10)).text == "interim 4.0"  # type: ignore[union-attr]
    assert not blocked.done()
    final.gate.set()
    await asyncio.wait_for(blocked, 10)
    await service.close()


async def test_a_waiting_interim_is_replaced_by_the_newer_one_of_its_speaker() -> None:
    interim = Gated("interim")
    service = TranscriptionService(RecordingTranscriber(), interim=interim)
    pcm = np.zeros(16_000, np.float32)
    running = asyncio.create_task(service.transcribe_interim("alice", pcm, 1.0))
    await asyncio.wait_for(until(lambda: interim.started == [1.0]), 10)
    waiting = [asyncio.create_task(service.transcribe_interim("alice", pcm, t)) for t in (2.0, 3.0)]
    other = asyncio.create_task(service.transcribe_interim("bob", pcm, 9.0))
    await asyncio.sleep(0)
    assert await asyncio.wait_for(waiting[0], 10) is None  # replaced while it waited: skipped
    interim.gate.set()
    results = await asyncio.wait_for(asyncio.gather(running, waiting[1], other), 10)
    assert [r.text for r in results if r is not None] == ["interim 1.0", "interim 3.0", "interim 9.0"]
    assert interim.started == [1.0, 3.0, 9.0]  # alice's newest kept her place in line, ahead of bob
    await service.close()


def skipped() -> float:
    return metrics.REGISTRY.get_sample_value("microemo_interim_skipped_total", {"event": "utterance"}) or 0.0


@pytest.mark.parametrize("separate", [True, False])
async def test_interims_of_long_speech_come_while_the_final_asr_is_busy(separate: bool) -> None:
    """The issue-22 case: finals of earlier speech keep Whisper busy. With an interim transcriber, the next
    utterance's interims still come (a priority, not luck); with the same one, they are skipped and counted."""
    events, final, interim = Events(), Gated("final"), RecordingTranscriber()
    asr = TranscriptionService(final, interim=interim if separate else None)
    segment, collect = Segment(events.context(), VadSettings(), interim_s=1.0), Collect()
    segment.then(Transcribe(events.context(), asr)).then(collect)
    before = skipped()

    # a short utterance that closes and blocks the final ASR, then 4.5 s of speech
    await feed_speech(segment, interim, [(False, 0.5), (True, 0.8), (False, 1.0), (True, 4.5), (False, 0.2)])
    assert final.started  # the first utterance's final transcription is under way, and stuck
    interims = [u for u in events.of_type("utterance") if not u["final"]]
    if separate:
        assert len(interims) == 4  # at 1, 2, 3 and 4 s of the second utterance
        assert [u["text"] for u in interims] == [f"{n} samples" for n, _ in interim.calls]
        assert skipped() == before
    else:
        assert interims == [] and skipped() - before == 4
    final.gate.set()
    await feed_speech(segment, interim, [(False, 1.0)])
    await segment.process(EndOfStream())
    utterances = events.of_type("utterance")
    assert [u["text"] for u in utterances if u["final"]] == [f"final {t}" for t in final.started[-2:]]
    await asr.close()


def shed() -> float:
    return metrics.REGISTRY.get_sample_value("microemo_shed_total", {"work": "interim"}) or 0.0


@pytest.mark.parametrize("late_ticks", [1, 10])
async def test_interims_on_their_own_worker_are_shed_only_at_the_face_floor(late_ticks: int) -> None:
    """Overload sheds face frames first; interims that share the ASR go as soon as any is shed, cheap ones on
    their own worker only once face frames can be shed no further."""
    shedder = Shedder(0.05)
    for _ in range(late_ticks):
        shedder.observe(1.0)
    events, interim = Events(), RecordingTranscriber()
    asr = TranscriptionService(RecordingTranscriber(), interim=interim)
    segment = Segment(events.context(), VadSettings(), interim_s=1.0)
    segment.then(Transcribe(events.context(), asr, shedder=shedder)).then(Collect())
    before = shed()
    await feed_speech(segment, interim, [(False, 0.5), (True, 3.5), (False, 1.0)])
    await segment.process(EndOfStream())
    interims = [u for u in events.of_type("utterance") if not u["final"]]
    if late_ticks == 1:  # face frames halved, not at their floor
        assert len(interims) == 3 and shed() == before
    else:
        assert interims == [] and shed() - before == 3
    await asr.close()
