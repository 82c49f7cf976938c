"""The emotion stage of the stream: clue extraction and the fast estimate, shared by every call, off the loop."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

from model.cues import ClueExtractor, Clues, FaceEpisode, FaceEvidence, UtteranceInput
from model.estimator import EmotionEstimate, FastEstimator
from model.expression import ExpressionClassifier
from model.prosody import SpeakerBaseline
from model.vocabulary import EmotionVocabulary, SentenceEncoder
from stream import metrics
from stream.config import EmotionSettings
from stream.video.micro import FaceWindow

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
        self._estimator = FastEstimator(EmotionVocabulary.load(), top_k=settings.top_k)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="emotion")
        self.name = self._estimator.name

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

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def face_evidence(window: FaceWindow) -> FaceEvidence:
    return FaceEvidence(
        present=window.present,
        episodes=tuple(
            FaceEpisode(e.region, e.onset, e.apex, e.offset, e.intensity, e.kind) for e in window.episodes
        ),
        regions=window.regions,
        crops=tuple(window.crops),
    )
