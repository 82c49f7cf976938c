"""The emotion stage of the stream: clues and the fast estimate, then (optionally) the LLM's refinement.

Shared by every call; models run off the event loop. With the LLM stage on, each utterance first gets the
fast estimate (`final: false`), then the LLM's answer batched with other calls' utterances (`final: true`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from model.cues import ClueExtractor, Clues, FaceEpisode, FaceEvidence, UtteranceInput
from model.estimator import EmotionEstimate, FastEstimator
from model.expression import ExpressionClassifier
from model.prosody import SpeakerBaseline
from model.vocabulary import EmotionVocabulary, SentenceEncoder
from stream import metrics
from stream.config import EmotionSettings, LLMStageSettings
from stream.video.micro import FaceWindow

if TYPE_CHECKING:
    from model.llm import MicroBatcher

log = logging.getLogger(__name__)


class EmotionStage:
    """Loads the clue models once (MiniLM, FER, the vocabulary); each utterance runs in one worker thread."""

    def __init__(self, settings: EmotionSettings) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the shipped models are local; never reach for a hub
        import torch

        torch.set_num_threads(1)  # MiniLM on one sentence gains nothing from more, and ASR needs the cores
        self.settings = settings
        self._sentences = SentenceEncoder(settings.sentence_model)
        self._sentences.embed_one("warm up")  # load now, not during the first call
        self._extractor = ClueExtractor(ExpressionClassifier(settings.expression_model), self._sentences)
        self.vocabulary = EmotionVocabulary.load()
        llm = settings.llm
        self._estimator = FastEstimator(
            self.vocabulary, top_k=settings.top_k, candidates=llm.candidates if llm.enabled else 0
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="emotion")
        self.name = self._estimator.name
        self.refiner = LLMRefiner(llm, self.vocabulary) if llm.enabled else None

    async def estimate(
        self, utterance: UtteranceInput, speaker: SpeakerBaseline
    ) -> tuple[Clues, EmotionEstimate]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._estimate, utterance, speaker)

    def _estimate(self, utterance: UtteranceInput, speaker: SpeakerBaseline) -> tuple[Clues, EmotionEstimate]:
        started = time.perf_counter()
        clues = self._extractor.extract(utterance, speaker)
        estimate = self._estimator.estimate(clues)
        metrics.STAGE_SECONDS.labels("emotion").observe(time.perf_counter() - started)
        return clues, estimate

    @property
    def active(self) -> str:
        """The model whose answers are final: the LLM's when it is on, else the fast estimator's."""
        return self.refiner.name if self.refiner is not None else self.name

    def health(self) -> dict[str, Any]:
        health: dict[str, Any] = {"state": "ready", "model": self.name, "active": self.active}
        health["llm"] = self.refiner.health() if self.refiner is not None else {"state": "disabled"}
        return health

    async def release_loop(self) -> None:
        """Stop the LLM batcher serving the running event loop (call before that loop ends)."""
        if self.refiner is not None:
            await self.refiner.release_loop()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class LLMRefiner:
    """The LLM stage: one model for every call behind a micro-batcher (one per event loop that uses it)."""

    def __init__(self, settings: LLMStageSettings, vocabulary: EmotionVocabulary) -> None:
        from model.llm import LLMReasoner, LLMSettings, smollm2_settings

        options: dict[str, Any] = {
            "device": settings.device,
            "dtype": settings.dtype,
            "mode": settings.mode,
            "max_batch": settings.max_batch,
            "max_wait_ms": settings.max_wait_ms,
            "explanation_tokens": settings.explanation_tokens,
        }
        if settings.model_path is None:
            llm_settings = smollm2_settings(**options)
        else:
            llm_settings = LLMSettings(
                model_path=settings.model_path, gguf_file=settings.gguf_file, **options
            )
        self.settings = settings
        self._llm_settings = llm_settings
        self._vocabulary = vocabulary
        self._reasoner = LLMReasoner(llm_settings)
        self.name = f"llm:{self._reasoner.name}"
        self._batchers: dict[asyncio.AbstractEventLoop, MicroBatcher] = {}
        self.pending = 0
        self.failures = 0

    @property
    def overloaded(self) -> bool:
        return self.pending >= self.settings.max_pending

    async def refine(
        self, call: str, uid: str, transcript: str, estimate: EmotionEstimate
    ) -> EmotionEstimate:
        """The LLM's reading of an utterance, as an estimate; raises when the LLM fails (the caller falls back)."""
        from model.llm import ReasoningRequest

        candidates = estimate.candidates or tuple(label for label, _ in estimate.labels)
        request = ReasoningRequest(
            call=call,
            utterance=uid,
            clues_text=estimate.clue_text(),
            transcript=transcript,
            candidates=candidates,
            candidate_va=tuple(self._vocabulary.affect_of(label) for label in candidates),
        )
        self.pending += 1
        started = time.perf_counter()
        try:
            result = await self._batcher().submit(request)
        except Exception:
            self.failures += 1
            metrics.LLM_FAILURES.inc()
            raise
        finally:
            self.pending -= 1
        metrics.STAGE_SECONDS.labels("llm").observe(time.perf_counter() - started)
        return EmotionEstimate(
            labels=tuple((label, round(score, 4)) for label, score in result.labels),
            valence=result.valence,
            arousal=result.arousal,
            families=estimate.families,
            explanation=result.explanation,
            model=self.name,
            votes=estimate.votes,
        )

    def health(self) -> dict[str, Any]:
        batches = [b.stats for b in self._batchers.values()]
        return {
            "state": "ready",
            "model": self.name,
            "device": str(self._reasoner.device),
            "mode": self.settings.mode,
            "pending": self.pending,
            "batches": sum(s.batches for s in batches),
            "requests": sum(s.requests for s in batches),
            "failures": self.failures,
        }

    def _batcher(self) -> MicroBatcher:
        from model.llm import MicroBatcher

        loop = asyncio.get_running_loop()
        for old in [other for other in self._batchers if other.is_closed()]:
            del self._batchers[old]  # e.g. `microemo eval` runs one loop per clip
        if loop not in self._batchers:
            self._batchers[loop] = MicroBatcher.from_settings(self._reasoner, self._llm_settings)
        return self._batchers[loop]

    async def release_loop(self) -> None:
        loop = asyncio.get_running_loop()
        batcher = self._batchers.pop(loop, None)
        if batcher is not None:
            await batcher.close()


def face_evidence(window: FaceWindow) -> FaceEvidence:
    return FaceEvidence(
        present=window.present,
        episodes=tuple(
            FaceEpisode(e.region, e.onset, e.apex, e.offset, e.intensity, e.kind) for e in window.episodes
        ),
        regions=window.regions,
        crops=tuple(window.crops),
    )
