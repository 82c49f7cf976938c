"""Clues → the emotion estimate (valence, arousal, families, open-vocabulary labels): learned heads or rules; CPU."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from model.emotion.clues import AudioClues, Clues, TextClues, VisualClues
from model.emotion.dialogue import TextReading
from model.emotion.heads import (
    EmotionHeads,
    HeadReading,
    affect_of,
    face_features,
    voice_features,
    words_say,
)
from model.emotion.vocabulary import EXPRESSION_FAMILY, FAMILIES, EmotionVocabulary, RankWeights

NAMED_EMOTION_BOOST = 0.6
MODEL_NAME = "fast-fusion/1 (text: vader+minilm; face: au+fer; voice: parselmouth)"
# The rules' face reading, mixed this much with uniform, stands in for a face head when none is trained
RULES_FACE_TRUST = 0.5
HEADS_TEXT_WEIGHT = 1.0  # the words' say in valence beside the fused heads'
# With a text head (heads/2): how much a fine label's score (0..1) adds to its vocabulary word, and the weights of
# the affect and the families beside it (the transcript's cosine to each word is left out: it read "Hi." as
# desperate)
FINE_LABEL_WEIGHT = 1.0
FINE_LABEL_RANKING = RankWeights(affect=1.0, family=2.0, text=0.0)

# Action units read as each basic family (Ekman's prototypes). Mouth opening and lip press are left out:
# while a person speaks they move with articulation, not with emotion.
AU_FAMILIES: dict[str, dict[str, float]] = {
    "happiness": {"lip_corner_pull": 1.0, "cheek_raise": 0.5},
    "sadness": {"lip_corner_depress": 1.0, "brow_inner_raise": 0.3},
    "anger": {"brow_lower": 1.0, "eye_tighten": 0.3, "lip_press": 0.2},
    "surprise": {"brow_inner_raise": 0.5, "brow_outer_raise": 0.5, "eye_widen": 0.7},
    "fear": {"brow_inner_raise": 0.3, "eye_widen": 0.5},
    "disgust": {"lip_corner_depress": 0.3, "eye_tighten": 0.3},
}

# One everyday word per basic family, always among a refiner's candidates.
ANCHOR_LABELS = ("happy", "sad", "angry", "afraid", "surprised", "disgusted", "calm")

REGION_WORDS = {
    "brow_inner_raise": "inner brow raise",
    "brow_outer_raise": "brow raise",
    "brow_lower": "lowered brows",
    "eye_widen": "widened eyes",
    "eye_tighten": "tightened eyes",
    "cheek_raise": "cheek raise",
    "lip_corner_pull": "smile",
    "lip_corner_depress": "lip corners down",
    "lip_press": "pressed lips",
    "mouth_open": "mouth open",
    "jaw_drop": "jaw drop",
}


@dataclass(frozen=True, slots=True)
class AffectVote:
    """One modality's reading; weights are its confidence (0: no say) for each quantity."""

    modality: str
    valence: float
    arousal: float
    valence_weight: float
    arousal_weight: float
    families: Mapping[str, float]  # a distribution over FAMILIES, or empty
    family_weight: float
    evidence: tuple[str, ...]  # human-readable clues, with their times


@dataclass(frozen=True, slots=True)
class EmotionEstimate:
    labels: tuple[tuple[str, float], ...]  # open-vocabulary labels, scores summing to 1
    valence: float
    arousal: float
    families: dict[str, float]
    explanation: str
    model: str
    votes: tuple[AffectVote, ...]
    candidates: tuple[str, ...] = ()  # labels a refining stage may choose from: the best ranked, then anchors

    def clue_text(self) -> str:
        """The clues behind the estimate, one phrase list per modality, e.g. "face: smile 2.0–3.5 s (macro)"."""
        parts = [f"{vote.modality}: {', '.join(vote.evidence)}" for vote in self.votes if vote.evidence]
        return "; ".join(parts) or "no clear clue in face, voice or words"


class FastEstimator:
    def __init__(
        self,
        vocabulary: EmotionVocabulary,
        top_k: int = 5,
        text_weight: float = 0.8,
        temperature: float = 0.08,
        candidates: int = 0,
    ) -> None:
        self.vocabulary = vocabulary
        self.top_k = top_k
        self.candidates = candidates  # best ranked labels offered to a refining stage (0: none)
        self._weights = RankWeights(text=text_weight)
        self._temperature = temperature
        self.name = MODEL_NAME

    def fuse(
        self, clues: Clues, words: TextReading | None = None
    ) -> tuple[float, float, dict[str, float], tuple[AffectVote, ...]]:
        """Valence, arousal, basic families and the votes behind them: hand-set rules per modality (`words`, a
        learned reading of the transcript, is for estimators that have a text head)."""
        votes = tuple(
            vote
            for vote in (text_vote(clues.text), visual_vote(clues.visual), audio_vote(clues.audio))
            if vote is not None
        )
        return _weighted(votes, "valence"), _weighted(votes, "arousal"), _fused_families(votes), votes

    def estimate(self, clues: Clues, words: TextReading | None = None) -> EmotionEstimate:
        """words: the transcript read with the conversation before it (the service's; None: read alone)."""
        valence, arousal, families, votes = self.fuse(clues, words)
        embedding, boost, weights = self._label_clues(clues.text)
        ranked = self.vocabulary.rank(
            valence,
            arousal,
            families or None,
            embedding,
            top_k=max(self.top_k, self.candidates),
            weights=weights,
            boost=boost,
        )
        candidates = self._candidates([word for word, _ in ranked[: self.candidates]])
        ranked = ranked[: self.top_k]
        scores = np.array([s for _, s in ranked])
        probs = np.exp((scores - scores.max()) / self._temperature)
        probs /= probs.sum()
        labels = tuple((word, round(float(p), 4)) for (word, _), p in zip(ranked, probs, strict=True))
        return EmotionEstimate(
            labels=labels,
            valence=valence,
            arousal=arousal,
            families=families,
            explanation=explain(labels[0][0], valence, arousal, votes, clues.text),
            model=self.name,
            votes=votes,
            candidates=candidates,
        )

    def _candidates(self, best: list[str]) -> tuple[str, ...]:
        """The best ranked words, then one anchor per basic family, so a refiner can overrule the ranking."""
        if not best:
            return ()
        groups = {self.vocabulary.canonical(word) for word in best}
        anchors = [
            w for w in ANCHOR_LABELS if w in self.vocabulary and self.vocabulary.canonical(w) not in groups
        ]
        return tuple(best + anchors)

    def _label_clues(
        self, text: TextClues | None
    ) -> tuple[npt.NDArray[np.float32] | None, dict[str, float], RankWeights]:
        """What ranks the vocabulary's words beside the affect and families: the transcript's embedding (by
        cosine to each word) and the emotion words the speaker said."""
        return (text.embedding if text is not None else None), self._named_emotions(text), self._weights

    def _named_emotions(self, text: TextClues | None) -> dict[str, float]:
        """Emotion words the speaker used ("I'm worried") are strong clues, unless negated."""
        if text is None or text.affect.negations:
            return {}
        words = {w.strip(".,!?;:\"'").lower() for w in text.text.split()}
        return {w: NAMED_EMOTION_BOOST for w in words if w in self.vocabulary}


# -- votes ---------------------------------------------------------------------------------------
def text_vote(text: TextClues | None) -> AffectVote | None:
    if text is None:
        return None
    affect = text.affect
    arousal = 0.25 * affect.exclamations + 0.15 * len(affect.intensifiers) - 0.15 * len(affect.hedges)
    evidence = [f'words: "{_shorten(text.text)}"']
    if affect.hedges:
        evidence.append(f"hedging ({', '.join(affect.hedges)})")
    if affect.negations:
        evidence.append(f"negation ({', '.join(affect.negations)})")
    return AffectVote(
        modality="text",
        valence=affect.valence,
        arousal=float(np.clip(arousal, -1, 1)),
        valence_weight=0.25 + 0.6 * abs(affect.valence),  # sentiment-free words say little about valence
        arousal_weight=0.2 if arousal else 0.05,
        families={},
        family_weight=0.0,
        evidence=tuple(evidence),
    )


def visual_vote(visual: VisualClues | None) -> AffectVote | None:
    if visual is None:
        return None
    au_scores = {
        family: sum(weight * visual.action_units.get(au, 0.0) for au, weight in aus.items())
        for family, aus in AU_FAMILIES.items()
    }
    strength = max(au_scores.values(), default=0.0)
    au_scores["neutral"] = max(0.0, 0.15 - strength)
    families = _normalised(au_scores)
    if visual.expression:
        fer = _normalised({EXPRESSION_FAMILY[k]: v for k, v in visual.expression.items()})
        families = _normalised({f: 0.6 * families.get(f, 0.0) + 0.4 * fer.get(f, 0.0) for f in FAMILIES})
    valence, arousal = affect_of(families)
    confidence = visual.present * (0.4 + 0.6 * min(1.0, strength / 0.3))
    evidence = [
        f"{REGION_WORDS.get(e.region, e.region)} {e.onset:.2f}–{e.offset:.2f} s ({e.kind})"
        for e in visual.episodes
    ]
    if visual.expression:
        top = max(visual.expression, key=visual.expression.__getitem__)
        evidence.append(f"face looks {top} ({visual.expression[top]:.2f})")
    return AffectVote(
        modality="visual",
        valence=valence,
        arousal=arousal,
        valence_weight=confidence,
        arousal_weight=0.6 * confidence,
        families=families,
        family_weight=confidence,
        evidence=tuple(evidence),
    )


def audio_vote(audio: AudioClues | None) -> AffectVote | None:
    if audio is None:
        return None
    p = audio.prosody
    relative = p.energy_rel_db is not None and p.f0_rel_semitones is not None
    arousal = 0.0
    evidence = []
    if relative:
        arousal += 0.08 * (p.energy_rel_db or 0.0) + 0.06 * (p.f0_rel_semitones or 0.0)
        if (p.energy_rel_db or 0.0) > 3:
            evidence.append("louder than usual")
        elif (p.energy_rel_db or 0.0) < -3:
            evidence.append("quieter than usual")
        if (p.f0_rel_semitones or 0.0) > 2:
            evidence.append("higher pitch than usual")
        elif (p.f0_rel_semitones or 0.0) < -2:
            evidence.append("lower pitch than usual")
    if p.f0_range_semitones is not None:
        arousal += 0.04 * (p.f0_range_semitones - 5.0)  # lively intonation spans more than ~5 semitones
    if p.speech_rate_wps is not None:
        arousal += 0.15 * (p.speech_rate_wps - 2.5)
        if p.speech_rate_wps > 3.5:
            evidence.append(f"fast speech ({p.speech_rate_wps:.1f} words/s)")
        elif p.speech_rate_wps < 1.8:
            evidence.append(f"slow speech ({p.speech_rate_wps:.1f} words/s)")
    slope = p.f0_slope_st_per_s or 0.0
    if slope > 4:
        evidence.append("rising pitch")
    elif slope < -4:
        evidence.append("falling pitch")
    if p.pause_total_s > 0.8:
        evidence.append(f"pauses ({p.pause_total_s:.1f} s)")
    return AffectVote(
        modality="audio",
        valence=float(np.clip(0.02 * slope, -0.3, 0.3)),  # intonation says little about valence
        arousal=float(np.clip(arousal, -1, 1)),
        valence_weight=0.1,
        arousal_weight=0.4 if relative else 0.2,
        families={},
        family_weight=0.0,
        evidence=tuple(evidence),
    )


# -- fusion --------------------------------------------------------------------------------------
def _weighted(votes: tuple[AffectVote, ...], quantity: str) -> float:
    weights = np.array([getattr(v, f"{quantity}_weight") for v in votes])
    if not len(votes) or weights.sum() <= 0:
        return 0.0
    values = np.array([getattr(v, quantity) for v in votes])
    return float(np.clip((weights * values).sum() / weights.sum(), -1, 1))


def _fused_families(votes: tuple[AffectVote, ...]) -> dict[str, float]:
    total: dict[str, float] = {}
    for vote in votes:
        for family, p in vote.families.items():
            total[family] = total.get(family, 0.0) + vote.family_weight * p
    return _normalised(total) if total else {}


def _normalised(scores: Mapping[str, float]) -> dict[str, float]:
    total = sum(max(0.0, s) for s in scores.values())
    if total <= 0:
        return {}
    return {k: max(0.0, s) / total for k, s in scores.items()}


def explain(
    label: str, valence: float, arousal: float, votes: tuple[AffectVote, ...], text: TextClues | None
) -> str:
    clues = [e for vote in votes for e in vote.evidence]
    reading = f"{label} (valence {valence:+.2f}, arousal {arousal:+.2f})"
    if not clues:
        return f"{reading}: no clear clue in face, voice or words"
    return f"{reading}: " + "; ".join(clues)


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


class HeadsEstimator(FastEstimator):
    """Learned heads (model/emotion/heads.py) read voice, face and, from heads/2, the words (with the conversation
    before them); their fusion gives the basic families and arousal. Valence: the fusion's, with the text head's
    (heads/2) or the rules' words (heads/1) beside it. Labels: with a text head, the fine labels it scores
    (GoEmotions' emotions, named by the vocabulary's words) rank the words, instead of the transcript's cosine
    to each word."""

    def __init__(self, vocabulary: EmotionVocabulary, heads: EmotionHeads, **options: Any) -> None:
        super().__init__(vocabulary, **options)
        self.heads = heads
        self.name = heads.name

    def fuse(
        self, clues: Clues, words: TextReading | None = None
    ) -> tuple[float, float, dict[str, float], tuple[AffectVote, ...]]:
        voice = face = text = None
        votes: list[AffectVote] = []
        if clues.audio is not None and clues.audio.voice is not None:
            voice = self.heads.read_voice(voice_features(clues.audio.voice, clues.audio.prosody))
            votes.append(_head_vote("audio", voice, audio_vote(clues.audio)))
        if clues.visual is not None:
            v = clues.visual
            face = self.heads.read_face(face_features(v.present, v.action_units, v.expression))
            rules = visual_vote(v)
            if face is None and rules is not None:  # no face head trained: the rules' reading stands in
                face = _tempered(rules.families)
            if face is not None:
                votes.append(_head_vote("visual", face, rules))
        rules_text = text_vote(clues.text)
        say = words_say(clues.text.heard if clues.text is not None else None)
        if words is None and self.heads.text is not None and clues.text is not None:
            if clues.text.embedding is not None:
                words = self.heads.text.read_text(clues.text.embedding)
        if words is not None:
            text = HeadReading(words.families, words.valence, affect_of(words.families)[1])
            votes.insert(0, _head_vote("text", text, rules_text))
        elif rules_text is not None:
            votes.insert(0, rules_text)
        fused = self.heads.fusion.fuse({"voice": voice, "face": face, "text": text}, say={"text": say})
        valence = fused.valence
        if text is not None:
            weight = HEADS_TEXT_WEIGHT * say
            valence = (valence + weight * text.valence) / (1 + weight)
        elif rules_text is not None:
            weight = HEADS_TEXT_WEIGHT * rules_text.valence_weight * say
            valence = (valence + weight * rules_text.valence) / (1 + weight)
        return float(np.clip(valence, -1, 1)), fused.arousal, fused.families, tuple(votes)

    def _label_clues(
        self, text: TextClues | None
    ) -> tuple[npt.NDArray[np.float32] | None, dict[str, float], RankWeights]:
        heads = self.heads.text
        if heads is None or text is None or text.embedding is None:
            return super()._label_clues(text)
        say = words_say(text.heard)
        boost = {word: say * score for word, score in self._named_emotions(text).items()}
        for label, score in heads.fine_labels(text.embedding).items():
            word = heads.fine.words.get(label)
            if word is not None and word in self.vocabulary:
                boost[word] = boost.get(word, 0.0) + FINE_LABEL_WEIGHT * say * score
        return None, boost, FINE_LABEL_RANKING


def _head_vote(modality: str, reading: HeadReading, rules: AffectVote | None) -> AffectVote:
    """A head's reading as a vote, its evidence the head's top family beside the rules' clues and times."""
    top = max(reading.families, key=reading.families.__getitem__)
    evidence: tuple[str, ...] = (f"{modality} reads as {top} ({reading.families[top]:.2f})",)
    if rules is not None:
        evidence += rules.evidence
    return AffectVote(
        modality=modality,
        valence=reading.valence,
        arousal=reading.arousal,
        valence_weight=1.0,
        arousal_weight=1.0,
        families=reading.families,
        family_weight=1.0,
        evidence=evidence,
    )


def _tempered(families: Mapping[str, float]) -> HeadReading:
    """The rules' face families, flattened towards uniform: hand-set rules are trusted less than a head."""
    uniform = 1.0 / len(FAMILIES)
    mixed = {
        f: RULES_FACE_TRUST * float(families.get(f, 0.0)) + (1 - RULES_FACE_TRUST) * uniform for f in FAMILIES
    }
    if not families:
        mixed = {f: uniform for f in FAMILIES}
    return HeadReading(mixed, *affect_of(mixed))
