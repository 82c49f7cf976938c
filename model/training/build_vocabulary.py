"""Regenerate the emotion vocabulary table by semantic projection of each word with the shipped MiniLM."""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from model.emotion.vocabulary import (
    ANCHORS_JSON,
    CSV_COLUMNS,
    DATA_DIR,
    EMBEDDINGS_NPY,
    FAMILIES,
    VOCABULARY_CSV,
    Embeddings,
    EmotionVocabulary,
    SentenceEncoder,
)

# Which sign of valence each basic family allows (0: either).
FAMILY_VALENCE_SIGN: dict[str, int] = {
    "anger": -1,
    "disgust": -1,
    "fear": -1,
    "happiness": 1,
    "sadness": -1,
    "surprise": 0,
    "neutral": 0,
}

# The vocabulary, as synonym groups: canonical word -> its synonyms. The canonical word names the group in
# EMER-style evaluation, where a predicted synonym counts as a hit on its canonical word.
SYNONYM_GROUPS: dict[str, tuple[str, ...]] = {
    "happy": ("glad", "cheerful", "pleased", "upbeat"),
    "joyful": ("joyous", "elated", "jubilant", "euphoric", "ecstatic", "overjoyed", "blissful"),
    "delighted": ("charmed", "thrilled to bits"),
    "excited": ("thrilled", "enthusiastic", "eager", "exhilarated", "pumped"),
    "amused": ("entertained", "tickled", "giggly"),
    "content": ("satisfied", "fulfilled", "at ease"),
    "calm": ("relaxed", "peaceful", "serene", "tranquil", "composed", "mellow"),
    "relieved": ("reassured", "comforted", "soothed"),
    "grateful": ("thankful", "appreciative"),
    "proud": ("triumphant", "accomplished"),
    "hopeful": ("optimistic", "encouraged"),
    "confident": ("assured", "self-assured", "secure"),
    "loving": ("affectionate", "tender", "warm"),
    "interested": ("curious", "intrigued", "fascinated", "attentive"),
    "inspired": ("motivated", "uplifted"),
    "energetic": ("lively", "energized", "vigorous", "animated"),
    "playful": ("silly", "mischievous", "cheeky"),
    "admiring": ("impressed", "respectful"),
    "awestruck": ("awed", "in awe", "wonderstruck"),
    "surprised": ("astonished", "amazed", "startled", "taken aback"),
    "shocked": ("stunned", "dumbfounded", "flabbergasted"),
    "confused": ("puzzled", "perplexed", "bewildered", "baffled"),
    "skeptical": ("doubtful", "suspicious", "distrustful", "unconvinced", "dubious"),
    "reluctant": ("hesitant", "unwilling"),
    "uncertain": ("unsure", "ambivalent", "torn"),
    "neutral": ("indifferent", "impassive", "unemotional", "matter-of-fact"),
    "bored": ("uninterested", "unamused", "dull"),
    "tired": ("exhausted", "weary", "fatigued", "drained", "sleepy"),
    "apathetic": ("listless", "unmotivated", "detached"),
    "pensive": ("thoughtful", "reflective", "contemplative"),
    "sad": ("unhappy", "sorrowful", "downcast", "glum", "gloomy", "melancholy"),
    "depressed": ("hopeless", "despondent", "dejected", "despairing"),
    "miserable": ("wretched", "devastated"),
    "lonely": ("isolated", "abandoned", "left out"),
    "disappointed": ("disillusioned", "dissatisfied", "let down"),
    "hurt": ("wounded", "heartbroken"),
    "grieving": ("mournful", "bereaved"),
    "nostalgic": ("wistful", "sentimental"),
    "longing": ("yearning", "homesick"),
    "regretful": ("remorseful", "sorry", "apologetic"),
    "guilty": ("culpable",),
    "ashamed": ("humiliated", "mortified"),
    "embarrassed": ("awkward", "sheepish", "self-conscious"),
    "shy": ("timid", "bashful"),
    "anxious": ("nervous", "uneasy", "tense", "jittery", "on edge"),
    "worried": ("concerned", "troubled", "apprehensive"),
    "afraid": ("scared", "frightened", "fearful"),
    "terrified": ("panicked", "horrified", "petrified"),
    "insecure": ("vulnerable", "inadequate"),
    "stressed": ("overwhelmed", "pressured", "frazzled"),
    "distressed": ("upset", "disturbed", "shaken"),
    "desperate": ("frantic",),
    "helpless": ("powerless",),
    "annoyed": ("irritated", "bothered", "irked", "peeved"),
    "frustrated": ("exasperated", "fed up"),
    "impatient": ("restless", "agitated"),
    "angry": ("mad", "cross", "irate"),
    "furious": ("enraged", "livid", "outraged", "infuriated", "seething"),
    "resentful": ("bitter", "spiteful"),
    "offended": ("insulted", "indignant"),
    "hostile": ("aggressive", "antagonistic", "belligerent"),
    "defensive": ("guarded",),
    "grumpy": ("cranky", "grouchy", "sulky", "sullen"),
    "disgusted": ("revolted", "repulsed", "nauseated", "sickened"),
    "contemptuous": ("scornful", "disdainful", "condescending"),
    "jealous": ("envious",),
    "sarcastic": ("sardonic", "mocking"),
    "cynical": ("jaded",),
    "arrogant": ("smug", "conceited", "cocky"),
    "determined": ("resolute", "persistent", "focused"),
    "brave": ("courageous", "bold", "fearless"),
    "sympathetic": ("compassionate", "empathetic", "caring"),
    "trusting": ("accepting",),
    "humble": ("modest",),
    "passionate": ("fervent", "ardent"),
    "incredulous": ("disbelieving",),
    "uncomfortable": ("ill at ease",),
    "betrayed": ("deceived",),
    "alarmed": ("dismayed",),
}


@dataclass(frozen=True, slots=True)
class AffectAnchors:
    """The anchor words of the projection, as kept for review in data/affect_anchors.json."""

    templates: tuple[str, ...]
    valence_positive: tuple[str, ...]
    valence_negative: tuple[str, ...]
    pleasant_high: tuple[str, ...]
    pleasant_low: tuple[str, ...]
    unpleasant_high: tuple[str, ...]
    unpleasant_low: tuple[str, ...]
    blend_width: float
    synonym_pull: float
    families: dict[str, tuple[str, ...]]
    family_valence_gate: float

    @classmethod
    def load(cls, path: Path = DATA_DIR / ANCHORS_JSON) -> AffectAnchors:
        raw = json.loads(path.read_text(encoding="utf-8"))
        arousal = raw["arousal"]
        families = {name: tuple(words) for name, words in raw["families"].items()}
        if tuple(families) != FAMILIES:
            raise ValueError(f"{path}: families must be {FAMILIES}, got {tuple(families)}")
        return cls(
            templates=tuple(raw["templates"]),
            valence_positive=tuple(raw["valence"]["positive"]),
            valence_negative=tuple(raw["valence"]["negative"]),
            pleasant_high=tuple(arousal["pleasant"]["high"]),
            pleasant_low=tuple(arousal["pleasant"]["low"]),
            unpleasant_high=tuple(arousal["unpleasant"]["high"]),
            unpleasant_low=tuple(arousal["unpleasant"]["low"]),
            blend_width=float(arousal["blend_width"]),
            synonym_pull=float(raw["synonym_pull"]),
            families=families,
            family_valence_gate=float(raw["family_valence_gate"]),
        )


@dataclass(frozen=True, slots=True)
class Axis:
    """A semantic direction (unit vector, (dim,)) and the projection that counts as its zero."""

    direction: npt.NDArray[np.float32]
    centre: float

    def project(self, embeddings: Embeddings) -> npt.NDArray[np.float64]:
        return (embeddings @ self.direction).astype(np.float64) - self.centre


def vocabulary_words() -> tuple[list[str], list[str]]:
    """Every word of the vocabulary and its canonical word, canonical words first within each group."""
    words, canonicals = [], []
    for canonical, synonyms in SYNONYM_GROUPS.items():
        for word in (canonical, *synonyms):
            words.append(word)
            canonicals.append(canonical)
    duplicates = sorted({w for w in words if words.count(w) > 1})
    if duplicates:
        raise ValueError(f"words in more than one synonym group: {duplicates}")
    return words, canonicals


def embed_words(encoder: SentenceEncoder, words: Sequence[str], templates: Sequence[str]) -> Embeddings:
    """Mean embedding of each word over the templates, re-normalised, shape (len(words), dim)."""
    sentences = [t.format(word=w) for t in templates for w in words]
    per_template = encoder.embed(sentences).reshape(len(templates), len(words), -1)
    mean = per_template.mean(axis=0)
    return (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)


def anchor_axis(
    encoder: SentenceEncoder, positive: Sequence[str], negative: Sequence[str], templates: Sequence[str]
) -> Axis:
    """Mean(positive) - mean(negative), centred halfway between the two anchor sets' projections."""
    pos, neg = embed_words(encoder, positive, templates), embed_words(encoder, negative, templates)
    direction = pos.mean(axis=0) - neg.mean(axis=0)
    direction /= np.linalg.norm(direction)
    centre = float((pos @ direction).mean() + (neg @ direction).mean()) / 2.0
    return Axis(direction.astype(np.float32), centre)


def build_vocabulary(encoder: SentenceEncoder, anchors: AffectAnchors) -> EmotionVocabulary:
    """Place every vocabulary word on valence and arousal (-1..1) and in its nearest basic family."""
    words, canonicals = vocabulary_words()
    groups = np.unique(canonicals, return_inverse=True)[1]  # (n,) synonym group of each word
    embeddings = embed_words(encoder, words, anchors.templates)
    raw_valence, raw_arousal = project_affect(encoder, embeddings, anchors)
    valence = _rescale(_pull_to_group(raw_valence, groups, anchors.synonym_pull))
    arousal = _rescale(_pull_to_group(raw_arousal, groups, anchors.synonym_pull))
    return EmotionVocabulary(
        words=tuple(words),
        canonicals=tuple(canonicals),
        valence=valence,
        arousal=arousal,
        family=nearest_families(encoder, embeddings, valence, groups, anchors),
        embeddings=embeddings,
    )


def project_affect(
    encoder: SentenceEncoder, embeddings: Embeddings, anchors: AffectAnchors
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Raw valence and arousal projections of each word, shape (n,) each, zero halfway between anchors."""
    templates = anchors.templates
    valence = anchor_axis(encoder, anchors.valence_positive, anchors.valence_negative, templates).project(
        embeddings
    )
    pleasant = anchor_axis(encoder, anchors.pleasant_high, anchors.pleasant_low, templates).project(
        embeddings
    )
    unpleasant = anchor_axis(encoder, anchors.unpleasant_high, anchors.unpleasant_low, templates).project(
        embeddings
    )
    pleasantness = 1.0 / (1.0 + np.exp(-valence / anchors.blend_width))
    return valence, pleasantness * pleasant + (1.0 - pleasantness) * unpleasant


def nearest_families(
    encoder: SentenceEncoder,
    embeddings: Embeddings,
    valence: npt.NDArray[np.float32],
    groups: npt.NDArray[np.intp],
    anchors: AffectAnchors,
) -> tuple[str, ...]:
    """The basic family of each word: the one its synonym group is on average most similar to."""
    prototypes = np.stack(
        [embed_words(encoder, anchors.families[f], anchors.templates).mean(axis=0) for f in FAMILIES]
    )
    prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True)
    similarity = embeddings @ prototypes.T  # (n, families)
    family_sign = np.array([FAMILY_VALENCE_SIGN[f] for f in FAMILIES])
    family_of_group = {}
    for group in np.unique(groups):
        members = groups == group
        group_similarity = similarity[members].mean(axis=0)
        group_valence = float(valence[members].mean())
        if abs(group_valence) > anchors.family_valence_gate:
            group_similarity[family_sign == -np.sign(group_valence)] = -np.inf
        family_of_group[group] = FAMILIES[int(np.argmax(group_similarity))]
    return tuple(family_of_group[g] for g in groups)


def _pull_to_group(
    values: npt.NDArray[np.float64], groups: npt.NDArray[np.intp], pull: float
) -> npt.NDArray[np.float64]:
    """Each value moved `pull` of the way towards the mean of its synonym group."""
    group_mean = np.bincount(groups, weights=values) / np.bincount(groups)
    return (1.0 - pull) * values + pull * group_mean[groups]


def _rescale(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """Scale each side of zero by its largest magnitude, so the vocabulary spans -1..1 and keeps its zero.

    Each side separately: MiniLM projects some kinds of words (fear, for one) less far than others, and one
    common scale would leave the whole unpleasant half squeezed near zero.
    """
    positive, negative = max(values.max(), 1e-9), max(-values.min(), 1e-9)
    return np.where(values >= 0, values / positive, values / negative).astype(np.float32)


def write_vocabulary(vocabulary: EmotionVocabulary, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / VOCABULARY_CSV).open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for i, word in enumerate(vocabulary.words):
            row = (
                word,
                vocabulary.canonicals[i],
                vocabulary.valence[i],
                vocabulary.arousal[i],
                vocabulary.family[i],
            )
            writer.writerow((*row[:2], f"{row[2]:.3f}", f"{row[3]:.3f}", row[4]))
    np.save(directory / EMBEDDINGS_NPY, vocabulary.embeddings.astype(np.float16))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="folder for the CSV and the embeddings")
    parser.add_argument("--anchors", type=Path, default=DATA_DIR / ANCHORS_JSON)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    vocabulary = build_vocabulary(SentenceEncoder(), AffectAnchors.load(args.anchors))
    write_vocabulary(vocabulary, args.out)
    print(f"{len(vocabulary)} words -> {args.out / VOCABULARY_CSV} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
