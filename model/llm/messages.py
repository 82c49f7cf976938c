"""Messages of the LLM stage: a reasoning request, its result, and the protocol every reasoner follows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from torch import Tensor


@dataclass(frozen=True, slots=True)
class ReasoningRequest:
    """One closed utterance to reason about: its clues as compact text and the candidate emotion labels."""

    call: str
    utterance: str
    # e.g. "face: smile 2.0–3.5 s (macro); voice: rising pitch, loud; words: 'that's wonderful'"
    clues_text: str
    transcript: str
    candidates: tuple[str, ...]  # candidate emotion labels, one or a few words each
    candidate_va: tuple[tuple[float, float], ...]  # (valence, arousal) of each candidate, -1..1
    # (Q, H) float tokens already projected to the LLM hidden size H, placed before the prompt
    prefix_embeds: Tensor | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.candidates:
            raise ValueError(f"{self.call}/{self.utterance}: no candidate labels")
        if len(self.candidate_va) != len(self.candidates):
            raise ValueError(
                f"{self.call}/{self.utterance}: {len(self.candidates)} candidates "
                f"but {len(self.candidate_va)} valence/arousal pairs"
            )
        if any(not label.strip() for label in self.candidates):
            raise ValueError(f"{self.call}/{self.utterance}: empty candidate label")
        if self.prefix_embeds is not None and self.prefix_embeds.ndim != 2:
            raise ValueError(
                f"{self.call}/{self.utterance}: prefix_embeds must be (Q, H), got {tuple(self.prefix_embeds.shape)}"
            )


@dataclass(frozen=True, slots=True)
class ReasoningResult:
    """Refined emotion of one utterance: top labels with scores, valence/arousal, why, and which model said so."""

    labels: tuple[tuple[str, float], ...]  # best first; rank mode: probabilities over all candidates
    valence: float  # -1..1
    arousal: float  # -1..1
    explanation: str
    model: str


class LLMOutputError(ValueError):
    """The LLM answered with something that is not a valid emotion answer; `raw` keeps what it said."""

    def __init__(self, message: str, raw: str) -> None:
        super().__init__(f"{message}; raw output: {raw[:200]!r}")
        self.raw = raw


class EmotionReasoner(Protocol):
    """A backend that reasons about a batch of utterances; a failed utterance yields its exception in place."""

    @property
    def name(self) -> str: ...

    def reason_batch(self, requests: Sequence[ReasoningRequest]) -> list[ReasoningResult | Exception]: ...
