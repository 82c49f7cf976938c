"""Seen utterances → clues and the fast estimate → emotion events; then, optionally, the LLM's final word."""

from __future__ import annotations

import asyncio
import copy
from dataclasses import replace

from model.audio.prosody import SpeakerBaseline
from model.emotion.clues import UtteranceInput
from stream import metrics
from stream.emotion.emotion_service import EmotionService
from stream.emotion.refiner import LLMRefiner
from stream.events import EmotionEvent, Label
from stream.frames import EstimatedUtterance, SeenUtterance
from stream.pipeline import CutShort, ParticipantContext, Processor


class Estimate(Processor[SeenUtterance, EstimatedUtterance]):
    """Clues and the fast estimate (off the loop), published as an emotion event: final unless the LLM will
    refine it. An overloaded LLM is skipped (counted): the fast estimate stands, rather than a growing backlog.

    An utterance still open gets an interim estimate (final: false) when no other estimate is under way (else it
    is skipped, counted); it reads the speaker's pitch and loudness baseline without moving it, and goes no
    further down the chain."""

    def __init__(self, context: ParticipantContext, emotion: EmotionService) -> None:
        super().__init__(context)
        self._context = context
        self._emotion = emotion
        self._speaker = SpeakerBaseline()  # this participant's usual pitch and loudness

    async def handle(self, frame: SeenUtterance) -> None:
        context, utterance, transcript = self._context, frame.utterance, frame.transcript
        if not frame.final and not self._emotion.idle:
            metrics.INTERIM_SKIPPED.labels("emotion").inc()
            return
        request = UtteranceInput(
            utterance=frame.uid,
            t0=utterance.t0,
            t1=utterance.t1,
            text=transcript.text,
            words=tuple(
                (w.word, w.start - utterance.pcm_t0, w.end - utterance.pcm_t0) for w in transcript.words
            ),
            pcm=utterance.pcm,
            face=frame.window,
            voice=transcript.voice,
            heard=transcript.heard,
        )
        speaker = self._speaker if frame.final else copy.deepcopy(self._speaker)
        try:
            conversation = (
                context.call,
                context.participant,
            )  # the words are read with the call's before them
            clues, estimate = await context.cutoff.race(
                self._emotion.estimate(request, speaker, conversation=conversation, final=frame.final)
            )
        except CutShort as exc:
            if frame.final:  # the utterance event is out; its emotion is omitted, and the error says why
                context.error("not_estimated", f"no emotion estimate: {exc}", frame.uid)
            return
        except Exception as exc:
            self.report("emotion_failed", f"emotion estimate failed: {exc!r}", frame.uid)
            return
        if not frame.final:
            interim = EstimatedUtterance(frame.uid, utterance, transcript.text, clues, estimate, frame.window)
            context.publish(emotion_event(context, interim, final=False))
            return
        refiner = self._emotion.refiner
        refine = refiner is not None and not refiner.overloaded
        if refiner is not None and not refine:
            metrics.LLM_SKIPPED.inc()
        estimated = EstimatedUtterance(
            frame.uid, utterance, transcript.text, clues, estimate, frame.window, refine
        )
        context.publish(emotion_event(context, estimated, final=not refine))
        context.observe_latency("emotion", utterance.t1)
        await self.push(estimated)


class Refine(Processor[EstimatedUtterance, EstimatedUtterance]):
    """The LLM's final word on each estimated utterance, batched with other calls' (so each runs as a task of its
    own); when it fails, an llm_failed error and the fast estimate as final. The end of the stream waits for
    every refinement under way."""

    def __init__(self, context: ParticipantContext, refiner: LLMRefiner) -> None:
        super().__init__(context)
        self._context = context
        self._refiner = refiner
        self._refining: set[asyncio.Task[None]] = set()

    async def finish(self) -> None:
        if self._refining:
            await asyncio.gather(*self._refining, return_exceptions=True)

    async def handle(self, frame: EstimatedUtterance) -> None:
        if not frame.refine:
            await self.push(frame)
            return
        task = asyncio.create_task(self._refine(frame))
        self._refining.add(task)
        task.add_done_callback(self._refining.discard)

    async def _refine(self, frame: EstimatedUtterance) -> None:
        context = self._context
        try:
            estimate = await context.cutoff.race(  # cut short: the fast estimate stands, with llm_failed
                self._refiner.refine(context.call, frame.uid, frame.text, frame.estimate, frame.window)
            )
            refined = replace(frame, estimate=estimate)
        except Exception as exc:
            self.report("llm_failed", f"LLM refinement failed, fast estimate kept: {exc}", frame.uid)
            refined = frame
        context.publish(emotion_event(context, refined, final=True))
        context.observe_latency("emotion_final", frame.utterance.t1)
        await self.push(replace(refined, refine=False))


def emotion_event(context: ParticipantContext, frame: EstimatedUtterance, *, final: bool) -> EmotionEvent:
    estimate = frame.estimate
    return EmotionEvent(
        call=context.call,
        participant=context.participant,
        utterance=frame.uid,
        t0=frame.utterance.t0,
        t1=frame.utterance.t1,
        labels=tuple(Label(word, score) for word, score in estimate.labels),
        valence=estimate.valence,
        arousal=estimate.arousal,
        explanation=estimate.explanation,
        clues=frame.clues.to_event(),
        final=final,
        model=estimate.model,
    )
