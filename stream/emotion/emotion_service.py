"""Utterances of every call → clues and the fast estimate (one worker thread, models loaded once); the LLM refiner.

Shared by every call; models run off the event loop. With the LLM stage on, each utterance first gets the
fast estimate (`final: false`), then the LLM's answer batched with other calls' utterances (`final: true`).
With a projector checkpoint, the LLM also reads each utterance's video as tokens before its prompt.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.audio.prosody import SpeakerBaseline
from model.emotion.clues import ClueExtractor, Clues, UtteranceInput
from model.emotion.dialogue import ConversationContext, DialogueHeads, TextReading
from model.emotion.estimator import EmotionEstimate, FastEstimator, HeadsEstimator
from model.emotion.heads import DEFAULT_HEADS, EmotionHeads, HeadsMissingError
from model.emotion.vocabulary import EmotionVocabulary, SentenceEncoder
from model.face.expression import ExpressionClassifier
from model.face.micro import FaceWindow
from stream import metrics
from stream.config import ConfigError, EmotionSettings
from stream.emotion.refiner import LLMRefiner
from stream.faces.sampling import WholeFrames

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)
MAX_CONVERSATIONS = 1024  # calls whose conversation is kept; the least recently heard is dropped beyond


class EmotionService:
    """Loads the clue models once (MiniLM, FER, the vocabulary); each utterance runs in one worker thread."""

    def __init__(self, settings: EmotionSettings, voice_window: str | None = None) -> None:
        """voice_window: the encoder window the server's Whisper reads (audio.asr.window), which the voice head
        should have learned on."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the shipped models are local; never reach for a hub
        self.settings = settings
        self._sentences = SentenceEncoder(settings.sentence_model)
        self._sentences.embed_one("warm up")  # load now, not during the first call
        self._extractor = ClueExtractor(ExpressionClassifier(settings.expression_model), self._sentences)
        self.vocabulary = EmotionVocabulary.load()
        llm = settings.llm
        options: dict[str, Any] = {
            "top_k": settings.top_k,
            "candidates": llm.candidates if llm.enabled else 0,
        }
        self._estimator = (
            HeadsEstimator(self.vocabulary, _load_heads(settings.heads), **options)
            if settings.estimator == "heads"
            else FastEstimator(self.vocabulary, **options)
        )
        self._text_heads: DialogueHeads | None = self.heads.text if self.heads is not None else None
        heads = self.heads
        if heads is not None and voice_window is not None and heads.voice_window != voice_window:
            log.warning(
                "emotion.heads %s: its voice head learned on Whisper's %s window, the server encodes the %s "
                "window (audio.asr.window): the voice reads worse (train one: microemo train-heads --window %s)",
                heads.name,
                heads.voice_window,
                voice_window,
                voice_window,
            )
        # each call's conversation so far (the words' context), least recently used first
        self._conversations: OrderedDict[str, ConversationContext] = OrderedDict()
        self._conversations_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="emotion")
        self._running = 0  # estimates submitted and not yet done
        self.name = self._estimator.name
        self.refiner = LLMRefiner(llm, self.vocabulary, settings.top_k) if llm.enabled else None

    async def estimate(
        self,
        utterance: UtteranceInput,
        speaker: SpeakerBaseline | None,
        *,
        conversation: tuple[str, str] | None = None,
        final: bool = True,
    ) -> tuple[Clues, EmotionEstimate]:
        """conversation: (call, participant) whose conversation this utterance continues (its words are read
        with the call's earlier ones); a final one joins it, an interim one (final False) only reads it."""
        loop = asyncio.get_running_loop()
        self._running += 1
        try:
            return await loop.run_in_executor(
                self._executor, self._estimate, utterance, speaker, conversation, final
            )
        finally:
            self._running -= 1

    @property
    def idle(self) -> bool:
        """No estimate waiting or running: an interim one now delays no closed utterance's."""
        return self._running == 0

    async def estimate_clues(self, clues: Clues) -> EmotionEstimate:
        """The estimate from clues made elsewhere (`microemo eval` reads a still image's face this way)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._estimator.estimate, clues)

    @property
    def heads(self) -> EmotionHeads | None:
        """The learned heads the estimate uses (None with the rules)."""
        heads = getattr(self._estimator, "heads", None)
        return heads if isinstance(heads, EmotionHeads) else None

    async def face_reading(self, utterance: str, window: FaceWindow) -> EmotionEstimate | None:
        """The fast estimate from a face alone (a listener's, over someone else's utterance); None without a
        face clear enough to read."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._face_reading, utterance, window)

    def _face_reading(self, utterance: str, window: FaceWindow) -> EmotionEstimate | None:
        visual = self._extractor.visual_clues(window)
        if visual is None:
            return None
        clues = Clues(utterance=utterance, t0=window.t0, t1=window.t1, text=None, visual=visual, audio=None)
        return self._estimator.estimate(clues)

    def _estimate(
        self,
        utterance: UtteranceInput,
        speaker: SpeakerBaseline | None,
        conversation: tuple[str, str] | None,
        final: bool,
    ) -> tuple[Clues, EmotionEstimate]:
        started = time.perf_counter()
        clues = self._extractor.extract(utterance, speaker)
        words = self._read_in_conversation(clues, conversation, final)
        estimate = self._estimator.estimate(clues, words)
        metrics.STAGE_SECONDS.labels("emotion").observe(time.perf_counter() - started)
        return clues, estimate

    def _read_in_conversation(
        self, clues: Clues, conversation: tuple[str, str] | None, final: bool
    ) -> TextReading | None:
        """The words read with the call's earlier utterances (both sides, in order); None without a text head,
        words or a conversation. Only a final utterance joins the conversation."""
        heads = self._text_heads
        if heads is None or conversation is None or clues.text is None or clues.text.embedding is None:
            return None
        call, participant = conversation
        with self._conversations_lock:
            context = self._conversations.setdefault(call, heads.conversation())
            self._conversations.move_to_end(call)  # most recently used last
            while len(self._conversations) > MAX_CONVERSATIONS:
                self._conversations.popitem(last=False)
            read = context.add if final else context.peek
            return read(participant, clues.text.embedding).contextual

    @property
    def whole_frames(self) -> WholeFrames | None:
        """The frames video analysis must keep for the LLM stage's visual encoder; None when it has none."""
        return self.refiner.whole_frames if self.refiner is not None else None

    def end_call(self, call: str) -> None:
        """The call's last participant left: forget its conversation and its visual context."""
        with self._conversations_lock:
            self._conversations.pop(call, None)
        if self.refiner is not None:
            self.refiner.end_call(call)

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
        if self.refiner is not None:
            self.refiner.close()


def _load_heads(path: Path | None) -> EmotionHeads:
    try:
        return EmotionHeads.load(path or DEFAULT_HEADS)
    except (HeadsMissingError, KeyError, ValueError) as exc:
        raise ConfigError(f"emotion.heads: cannot load {path or DEFAULT_HEADS}: {exc}") from exc
