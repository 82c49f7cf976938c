"""Closed utterances → transcripts (one at a time, off the loop) → utterance events; a pause starts one early."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from stream.audio.asr import Transcript, TranscriptionService
from stream.audio.segmenter import ClosedUtterance, SpeechPaused
from stream.events import UtteranceEvent, WordTiming
from stream.pipeline import EndOfStream, ParticipantContext, Processor
from stream.stages.speech import ScoredUtterance


@dataclass(frozen=True, slots=True)
class HeardUtterance:
    """A closed utterance and what was said in it."""

    uid: str  # the utterance id of the events, e.g. "alice-3"
    utterance: ClosedUtterance
    speech_t: np.ndarray  # (k,) as in ScoredUtterance
    speech_prob: np.ndarray  # (k,)
    transcript: Transcript


class Transcribe(Processor[SpeechPaused | ScoredUtterance, HeardUtterance]):
    """Queues closed utterances, so that the audio stages never wait on ASR, and transcribes them in order; each
    is published as an utterance event and passed on before the next is taken (its face and emotion too).

    A pause starts transcribing early, while the segmenter waits to see if the silence closes the utterance:
    that saves up to min_silence_ms - speech_pad_ms of transcript latency. Only when the ASR workers are idle and
    the clock is live (a file needs no head start): a pause that does not close wastes idle compute only.
    """

    def __init__(self, context: ParticipantContext, asr: TranscriptionService) -> None:
        super().__init__()
        self._context = context
        self._asr = asr
        self._queue: asyncio.Queue[tuple[ScoredUtterance, asyncio.Task[Transcript] | None] | None]
        self._queue = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        # a transcription started at a pause, keyed by (utterance index, t1): used if that pause closes it
        self._early: tuple[tuple[int, float], asyncio.Task[Transcript]] | None = None

    async def process(self, frame: SpeechPaused | ScoredUtterance | EndOfStream) -> None:
        if isinstance(frame, SpeechPaused):
            self._start_early(frame.utterance)
        elif isinstance(frame, ScoredUtterance):
            if self._worker is None:
                self._worker = asyncio.create_task(self._work())
            self._queue.put_nowait((frame, self._take_early(frame.utterance)))
        else:
            self._take_early(None)
            if self._worker is not None:
                self._queue.put_nowait(None)
                await self._worker  # every closed utterance is transcribed and passed on first
            await self.push(frame)

    def _start_early(self, utterance: ClosedUtterance) -> None:
        self._take_early(None)  # speech resumed after the last pause: that transcript is not needed
        if self._context.clock.realtime and self._asr.backlog == 0:
            task = asyncio.create_task(self._asr.transcribe(utterance.pcm, utterance.pcm_t0))
            self._early = ((utterance.index, utterance.t1), task)

    def _take_early(self, utterance: ClosedUtterance | None) -> asyncio.Task[Transcript] | None:
        """The early transcription of `utterance`, if the pause it started at closed it; any other is cancelled."""
        early, self._early = self._early, None
        if early is None:
            return None
        if utterance is None or early[0] != (utterance.index, utterance.t1):
            early[1].cancel()
            return None
        return early[1]

    async def _work(self) -> None:
        context = self._context
        while (item := await self._queue.get()) is not None:
            scored, early = item
            utterance = scored.utterance
            uid = context.utterance_id(utterance.index)
            try:
                if early is not None:
                    transcript = await early
                else:
                    transcript = await self._asr.transcribe(utterance.pcm, utterance.pcm_t0)
            except Exception as exc:
                context.log.exception("transcription failed for %s", uid)
                context.error("asr_failed", f"transcription failed: {exc!r}", uid)
                continue
            continues = utterance.continues
            context.publish(
                UtteranceEvent(
                    call=context.call,
                    participant=context.participant,
                    utterance=uid,
                    t0=utterance.t0,
                    t1=utterance.t1,
                    text=transcript.text,
                    words=tuple(WordTiming(w.word, w.start, w.end, w.prob) for w in transcript.words),
                    lang=transcript.lang,
                    continues=None if continues is None else context.utterance_id(continues),
                    closed_by=utterance.reason,
                )
            )
            context.observe_latency("utterance", utterance.t1)
            await self.push(HeardUtterance(uid, utterance, scored.speech_t, scored.speech_prob, transcript))
