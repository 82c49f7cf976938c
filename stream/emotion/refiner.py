"""Estimated utterances → the LLM stage's final word: open-vocabulary labels and an explanation, batched across calls
(a local model behind a micro-batcher, or a shared OpenAI-compatible server); with a projector checkpoint, each
utterance's video goes before its prompt as visual tokens, with one incremental Q-Former cache per call."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from model.emotion.estimator import EmotionEstimate
from model.emotion.vocabulary import EmotionVocabulary
from model.face.micro import FaceWindow
from model.settings import LLMSettings
from stream import metrics
from stream.config import ConfigError
from stream.faces.sampling import WholeFrames

if TYPE_CHECKING:
    from torch import Tensor

    from model.llm import LLMReasoner, MicroBatcher, RemoteReasoner
    from model.microemo.prefix import PrefixEncoder
    from model.microemo.qformer import IncrementalQFormerCache

log = logging.getLogger(__name__)
# Calls whose visual context is kept, least recently used dropped first (and a call's when its last one leaves)
MAX_CALL_CACHES = 1024


class LLMRefiner:
    """The LLM stage: one model for every call behind a micro-batcher (one per event loop that uses it), or,
    with `backend: openai`, a shared inference server that batches every node's requests itself.

    With a projector checkpoint, an utterance with kept video frames gets visual prefix tokens, computed in a
    worker thread of its own; one incremental Q-Former cache per call holds that call's visual context.
    """

    def __init__(self, settings: LLMSettings, vocabulary: EmotionVocabulary, top_k: int = 3) -> None:
        """`top_k`: labels an answer keeps (the config's emotion.top_k)."""
        from model.llm import LLMReasoner, RemoteReasoner

        self.settings = settings
        self._vocabulary = vocabulary
        self._reasoner: LLMReasoner | None = None
        self._remote: RemoteReasoner | None = None
        if settings.backend == "openai":
            self._remote = RemoteReasoner(settings)
            self._remote.resolve_model()  # names the model in /healthz from the start when the server is up
            self.name = f"llm:{self._remote.name}"
        else:
            self._reasoner = LLMReasoner(settings, top_k)
            self.name = f"llm:{self._reasoner.name}"
        self._batchers: dict[asyncio.AbstractEventLoop, MicroBatcher] = {}
        self.pending = 0
        self.failures = 0
        self.prefix = None if settings.projector_checkpoint is None else self._load_prefix(settings)
        self._calls: OrderedDict[str, IncrementalQFormerCache] = OrderedDict()  # least recently used first
        self._calls_lock = threading.Lock()
        # One thread: a call's utterances reach its cache in the order their refinements started.
        self._prefix_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-prefix")
        self.prefixed = 0  # utterances answered with visual tokens

    def _load_prefix(self, settings: LLMSettings) -> PrefixEncoder:
        from model.microemo.prefix import PrefixEncoder, ProjectorMismatchError

        assert settings.projector_checkpoint is not None and self._reasoner is not None  # config: local only
        try:
            return PrefixEncoder.from_checkpoint(
                settings.projector_checkpoint, self._reasoner.device, self._reasoner.hidden_size
            )
        except (ProjectorMismatchError, FileNotFoundError) as exc:
            raise ConfigError(f"emotion.llm.projector_checkpoint: {exc}") from exc

    @property
    def projector(self) -> str | None:
        checkpoint = self.settings.projector_checkpoint
        return checkpoint.name if self.prefix is not None and checkpoint is not None else None

    @property
    def whole_frames(self) -> WholeFrames | None:
        if self.prefix is None:
            return None
        return WholeFrames(size=self.prefix.encoder_config.frame_size, fps=self.settings.projector_fps)

    @property
    def overloaded(self) -> bool:
        return self.pending >= self.settings.max_pending

    async def refine(
        self,
        call: str,
        uid: str,
        transcript: str,
        estimate: EmotionEstimate,
        window: FaceWindow | None = None,
    ) -> EmotionEstimate:
        """The LLM's reading of an utterance, as an estimate; raises when the LLM fails (the caller falls back).

        `window`: the utterance's face window; with a projector its kept frames become visual prefix tokens.
        """
        from model.llm import ReasoningRequest

        candidates = estimate.candidates or tuple(label for label, _ in estimate.labels)
        self.pending += 1
        started = time.perf_counter()
        try:
            prefix = None
            if self.prefix is not None and window is not None:
                loop = asyncio.get_running_loop()
                prefix = await loop.run_in_executor(self._prefix_executor, self._prefix_tokens, call, window)
            request = ReasoningRequest(
                call=call,
                utterance=uid,
                clues_text=estimate.clue_text(),
                transcript=transcript,
                candidates=candidates,
                candidate_va=tuple(self._vocabulary.affect_of(label) for label in candidates),
                prefix_embeds=prefix,
            )
            if self._remote is not None:
                result = await self._remote.reason(request)
                self.name = f"llm:{result.model}"  # the served model's name, once the server told it
            else:
                result = await self._batcher().submit(request)
        except Exception:
            self.failures += 1
            metrics.LLM_FAILURES.inc()
            raise
        finally:
            self.pending -= 1
        metrics.STAGE_SECONDS.labels("llm").observe(time.perf_counter() - started)
        if prefix is not None:
            self.prefixed += 1
        return EmotionEstimate(
            labels=tuple((label, round(score, 4)) for label, score in result.labels),
            valence=result.valence,
            arousal=result.arousal,
            families=estimate.families,
            explanation=result.explanation,
            # The event names what the answer rests on: the LLM alone, or the LLM reading the video too
            model=self.name if prefix is None else f"{self.name}+projector:{self.projector}",
            votes=estimate.votes,
        )

    def _prefix_tokens(self, call: str, window: FaceWindow) -> Tensor | None:
        """(Q + Qc, H) visual tokens of one utterance (None: no frame kept), in the prefix worker thread."""
        from model.microemo.window_clip import features_from_window

        assert self.prefix is not None
        started = time.perf_counter()
        encoder = self.prefix.encoder_config
        features = features_from_window(window, encoder.frame_size, encoder.crop_size)
        if features is None:
            return None
        tokens = self.prefix.tokens(self._call_cache(call), features)
        metrics.STAGE_SECONDS.labels("prefix").observe(time.perf_counter() - started)
        return tokens

    def _call_cache(self, call: str) -> IncrementalQFormerCache:
        assert self.prefix is not None
        with self._calls_lock:
            cache = self._calls.get(call)
            if cache is None:
                cache = self._calls[call] = self.prefix.new_cache()
                while len(self._calls) > MAX_CALL_CACHES:
                    self._calls.popitem(last=False)
            self._calls.move_to_end(call)
            return cache

    def end_call(self, call: str) -> None:
        with self._calls_lock:
            self._calls.pop(call, None)

    def health(self) -> dict[str, Any]:
        batches = [b.stats for b in self._batchers.values()]
        remote = self._remote
        return {
            "state": "ready",
            "model": self.name,
            "backend": self.settings.backend,
            "device": str(self._reasoner.device) if self._reasoner is not None else None,
            "url": remote.url if remote is not None else None,
            "mode": self.settings.mode,
            "pending": self.pending,
            "attempts": remote.stats.attempts if remote is not None else None,
            "retries": remote.stats.retries if remote is not None else None,
            "batches": sum(s.batches for s in batches),
            "requests": sum(s.requests for s in batches) + (remote.stats.requests if remote else 0),
            "failures": self.failures,
            "projector": self.projector,  # the checkpoint's file name when the LLM reads video too
            "prefixed": self.prefixed,
            "calls_with_video_context": len(self._calls),
        }

    def _batcher(self) -> MicroBatcher:
        from model.llm import MicroBatcher

        assert self._reasoner is not None
        loop = asyncio.get_running_loop()
        for old in [other for other in self._batchers if other.is_closed()]:
            del self._batchers[old]  # e.g. `microemo eval` runs one loop per clip
        if loop not in self._batchers:
            self._batchers[loop] = MicroBatcher.from_settings(self._reasoner, self.settings)
        return self._batchers[loop]

    async def release_loop(self) -> None:
        if self._remote is not None:
            await self._remote.close_loop()
        loop = asyncio.get_running_loop()
        batcher = self._batchers.pop(loop, None)
        if batcher is not None:
            await batcher.close()

    def close(self) -> None:
        self._prefix_executor.shutdown(wait=False, cancel_futures=True)
