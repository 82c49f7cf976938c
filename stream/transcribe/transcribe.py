"""Closed utterances → transcripts (one at a time, off the loop) → utterance events; a pause starts one early;
speech still going on gets interim transcripts (on the interim transcriber's own worker, or when the ASR has nothing
else to do)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np

from stream import metrics
from stream.events import UtteranceEvent, WordTiming
from stream.frames import (
    ClosedUtterance,
    HeardUtterance,
    ScoredUtterance,
    SpeechPaused,
    SpeechSoFar,
    Transcript,
)
from stream.overload import Shedder
from stream.pipeline import CutShort, ParticipantContext, Processor
from stream.transcribe.asr_service import TranscriptionService

# interim ticks land on the VAD's 32 ms chunks, a little past the interim_s grid: pacing allows for that
_TICK_SLACK_S = 0.1


class Transcribe(Processor[SpeechPaused | SpeechSoFar | ScoredUtterance, HeardUtterance]):
    """Queues closed utterances, so that the audio stages never wait on ASR, and transcribes them in order; each
    is published as an utterance event and passed on before the next is taken (its face and emotion too).

    A pause starts transcribing early, while the segmenter waits to see if the silence closes the utterance:
    that saves up to min_silence_ms - speech_pad_ms of transcript latency. Only when the ASR workers are idle and
    the clock is live (a file needs no head start): a pause that does not close wastes idle compute only.

    Speech still going on (SpeechSoFar) is transcribed and published as an interim utterance (final: false);
    one in `interim_emotion_s` of speech is also passed on for an interim face and emotion. Interim work never
    waits ahead of closed utterances. With an interim transcriber (audio.asr.interim_backend: moonshine) it has
    its own worker: every interim is asked for, and one still waiting when this speaker's next comes is
    replaced by it (skipped, counted). Without one, it runs only when the ASR is idle, and is skipped (counted)
    when the ASR is busy. One whose utterance has closed meanwhile is dropped (cancelled if not yet started).
    While `shedder` sheds work (speech runs late), none is started (counted as shed); on their own worker, only
    once face frames are shed to their floor.
    """

    def __init__(
        self,
        context: ParticipantContext,
        asr: TranscriptionService,
        interim_emotion_s: float | None = None,
        shedder: Shedder | None = None,
    ) -> None:
        super().__init__(context)
        self._context = context
        self._asr = asr
        self._shedder = shedder  # under overload, interim work goes (stream/overload.py)
        self._interim_emotion_s = interim_emotion_s
        self._interim: asyncio.Task[None] | None = None
        self._interim_for = -1  # the utterance index of the last interim asked for
        self._closed_index = -1  # the last utterance index closed: interim results up to it are stale
        self._interim_emotion_t: tuple[int, float] | None = None  # (index, t1) of the last interim passed on
        self._emit = asyncio.Lock()  # an interim result and a closing one are published and passed on in turn
        self._queue: asyncio.Queue[tuple[ScoredUtterance, asyncio.Task[Transcript] | None] | None]
        self._queue = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        # a transcription started at a pause, keyed by (utterance index, t1): used if that pause closes it
        self._early: tuple[tuple[int, float], asyncio.Task[Transcript]] | None = None

    async def handle(self, frame: SpeechPaused | SpeechSoFar | ScoredUtterance) -> None:
        if isinstance(frame, SpeechPaused):
            self._start_early(frame.utterance)
        elif isinstance(frame, SpeechSoFar):
            self._start_interim(frame.utterance)
        else:
            self._closed_index = frame.utterance.index
            if (
                self._asr.interim_separate
                and self._interim is not None
                and self._interim_for <= self._closed_index
            ):
                self._interim.cancel()  # its result would be dropped: do not spend the interim worker on it
            if self._worker is None:
                self._worker = asyncio.create_task(self._work())
            self._queue.put_nowait((frame, self._take_early(frame.utterance)))

    async def finish(self) -> None:
        self._take_early(None)
        if self._interim is not None:
            self._interim.cancel()
        if self._worker is not None:
            self._queue.put_nowait(None)
            await self._worker  # every closed utterance is transcribed and passed on first

    def _start_early(self, utterance: ClosedUtterance) -> None:
        self._take_early(None)  # speech resumed after the last pause: that transcript is not needed
        if self._context.clock.realtime and self._asr.backlog == 0:
            task = asyncio.create_task(self._asr.transcribe(utterance.pcm, utterance.pcm_t0))
            self._early = ((utterance.index, utterance.t1), task)

    def _start_interim(self, utterance: ClosedUtterance) -> None:
        self._take_early(None)  # speech went on after the last pause: that transcript is not needed
        separate = self._asr.interim_separate  # its own worker: never behind finals; newest wins there
        busy = not separate and (not self._asr.idle or not self._queue.empty())
        if busy or (not separate and self._interim is not None and not self._interim.done()):
            metrics.INTERIM_SKIPPED.labels("utterance").inc()
            return
        shedder = self._shedder
        if shedder is not None and not (
            shedder.cheap_interim_allowed if separate else shedder.interim_allowed
        ):
            metrics.SHED.labels("interim").inc()
            return
        self._interim = asyncio.create_task(self._transcribe_interim(utterance))
        self._interim_for = utterance.index

    async def _transcribe_interim(self, utterance: ClosedUtterance) -> None:
        context = self._context
        uid = context.utterance_id(utterance.index)
        asr = self._asr
        try:
            if asr.interim_separate:
                found = await asr.transcribe_interim(self, utterance.pcm, utterance.pcm_t0)
                if found is None:  # a newer interim of this speaker took its place in line
                    metrics.INTERIM_SKIPPED.labels("utterance").inc()
                    return
                transcript = found
            else:
                transcript = await asr.transcribe(utterance.pcm, utterance.pcm_t0, words=False)
        except Exception as exc:  # the closing transcript will be tried again; say it once, as a warning
            context.log.warning("interim transcription failed for %s: %r", uid, exc)
            return
        async with self._emit:
            if utterance.index <= self._closed_index:
                return  # closed meanwhile: its final transcript is coming
            context.publish(utterance_event(context, utterance, transcript, final=False))
            context.observe_latency("utterance_interim", utterance.t1)
            if not self._interim_emotion_due(utterance):
                return
            self._interim_emotion_t = (utterance.index, utterance.t1)
            empty = np.zeros(0)
            await self.push(HeardUtterance(uid, utterance, empty, empty, transcript, final=False))

    def _interim_emotion_due(self, utterance: ClosedUtterance) -> bool:
        """At most one interim face and emotion per `interim_emotion_s` of an utterance's speech."""
        if self._interim_emotion_s is None:
            return False
        last = self._interim_emotion_t
        since = utterance.t0 if last is None or last[0] != utterance.index else last[1]
        return utterance.t1 - since >= self._interim_emotion_s - _TICK_SLACK_S

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
                    transcript = await context.cutoff.race(early)
                else:
                    transcript = await context.cutoff.race(
                        self._asr.transcribe(utterance.pcm, utterance.pcm_t0)
                    )
            except CutShort as exc:
                # Delivered without its text (and without face and emotion, which would wait on it): an
                # utterance that was heard is never dropped.
                async with self._emit:
                    context.publish(not_transcribed_event(context, utterance))
                    context.error("not_transcribed", f"not transcribed, no face or emotion: {exc}", uid)
                continue
            except Exception as exc:
                self.report("asr_failed", f"transcription failed: {exc!r}", uid)
                continue
            async with self._emit:
                context.publish(utterance_event(context, utterance, transcript, final=True))
                context.observe_latency("utterance", utterance.t1)
                await self.push(
                    HeardUtterance(uid, utterance, scored.speech_t, scored.speech_prob, transcript)
                )


def utterance_event(
    context: ParticipantContext, utterance: ClosedUtterance, transcript: Transcript, *, final: bool
) -> UtteranceEvent:
    continues = utterance.continues
    return UtteranceEvent(
        call=context.call,
        participant=context.participant,
        utterance=context.utterance_id(utterance.index),
        t0=utterance.t0,
        t1=utterance.t1,
        text=transcript.text,
        words=tuple(WordTiming(w.word, w.start, w.end, w.prob) for w in transcript.words),
        lang=transcript.lang,
        continues=None if continues is None else context.utterance_id(continues),
        closed_by=utterance.reason if final else None,
        final=final,
    )


def not_transcribed_event(context: ParticipantContext, utterance: ClosedUtterance) -> UtteranceEvent:
    """The closing event of an utterance given up before it was transcribed: no text, no words."""
    return replace(utterance_event(context, utterance, Transcript("", (), ""), final=True), transcribed=False)
