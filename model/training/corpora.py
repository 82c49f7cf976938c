"""Manifests of labelled emotion corpora: one reader per corpus turns a local copy into manifest rows."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from model.emotion.vocabulary import FAMILIES

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = frozenset({".wav", ".mp3", ".flac", ".m4a"})
VIDEO_SUFFIXES = frozenset({".mp4", ".flv", ".avi", ".mov", ".mkv", ".webm"})
SPLITS = ("train", "dev", "test")  # dev: for choices only, never trained on
MODALITIES = ("audio", "video")
# Never trained or tuned on: they measure how the model does on speakers, sentences and studios it has not
# seen (RAVDESS actors 17-24 are held out as well, through RAVDESS's own split).
EVALUATION_ONLY = frozenset({"emodb", "crema-d", "mead"})

Emotion = tuple[tuple[str, ...], str]  # (labels, most fitting first; basic family)


@dataclass(frozen=True, slots=True)
class CorpusClip:
    """One labelled clip of a corpus: a manifest row before its path is written relative to the manifest."""

    path: Path  # absolute
    labels: tuple[str, ...]  # emotion-vocabulary words, most fitting first
    family: str  # one of FAMILIES: the basic emotion the corpus means
    dataset: str
    speaker: str  # "<dataset>-<id>", so speakers of different corpora never share a name
    gender: str | None  # "f" or "m"; None where the corpus does not say
    lang: str  # ISO 639-1
    modality: str  # "audio" or "video"
    split: str  # "train" or "test"
    intensity: str | None = None  # as the corpus grades it: normal/strong (RAVDESS), low/medium/high

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family {self.family!r} is not one of {FAMILIES}")
        if self.split not in SPLITS or self.modality not in MODALITIES:
            raise ValueError(f"bad split {self.split!r} or modality {self.modality!r}")

    def row(self, manifest_dir: Path) -> dict[str, str | list[str]]:
        """The manifest line, its clip relative to the manifest's folder (absolute on another drive)."""
        try:
            clip = os.path.relpath(self.path, manifest_dir)
        except ValueError:  # Windows: no relative path between drives
            clip = str(self.path)
        row: dict[str, str | list[str]] = {
            "clip": Path(clip).as_posix(),
            "labels": list(self.labels),
            "family": self.family,
            "dataset": self.dataset,
            "speaker": self.speaker,
        }
        if self.gender is not None:
            row["gender"] = self.gender
        row["lang"] = self.lang
        row["modality"] = self.modality
        if self.intensity is not None:
            row["intensity"] = self.intensity
        row["split"] = self.split
        return row


class CorpusError(ValueError):
    """A corpus, folder or split that cannot become a manifest; the message says why and what to do."""


# RAVDESS (Livingstone & Russo 2018): 03-01-EE-II-SS-RR-AA, modality 01 audio-video, 02 video, 03 audio;
# vocal channel 01 speech, 02 song; emotion; intensity; statement; repetition; actor (odd male, even female).
RAVDESS_NAME = re.compile(r"(0[1-3])-(0[12])-(0[1-8])-(0[12])-(0[12])-(0[12])-(\d\d)")
RAVDESS_EMOTIONS: dict[str, Emotion] = {
    "01": (("neutral",), "neutral"),
    # The vocabulary files "calm" under happiness; RAVDESS means a calm neutral state, acted as such.
    "02": (("calm",), "neutral"),
    "03": (("happy",), "happiness"),
    "04": (("sad",), "sadness"),
    "05": (("angry",), "anger"),
    "06": (("fearful",), "fear"),
    "07": (("disgusted",), "disgust"),
    "08": (("surprised",), "surprise"),
}
RAVDESS_INTENSITY = {"01": "normal", "02": "strong"}
RAVDESS_TEST_ACTORS = frozenset(range(17, 25))

# TESS (Dupuis & Pichora-Fuller 2010): OAF_back_angry.wav, an older (64) and a younger (26) actress.
TESS_NAME = re.compile(r"([A-Za-z]+)_([A-Za-z]+)_([A-Za-z_]+)")
TESS_SPEAKERS = {"OAF": "oaf", "OA": "oaf", "YAF": "yaf"}  # the original names one file OA_bite_neutral.wav
_PLEASANT_SURPRISE: Emotion = (("surprised", "amazed"), "surprise")
TESS_EMOTIONS: dict[str, Emotion] = {
    "angry": (("angry",), "anger"),
    "disgust": (("disgusted",), "disgust"),
    "fear": (("fearful",), "fear"),
    "happy": (("happy",), "happiness"),
    "neutral": (("neutral",), "neutral"),
    "ps": _PLEASANT_SURPRISE,
    "pleasant_surprise": _PLEASANT_SURPRISE,
    "pleasant_surprised": _PLEASANT_SURPRISE,
    "sad": (("sad",), "sadness"),
}

# URDU (Latif et al. 2018), Urdu talk shows: Angry/SM1_F10_A010.wav = speaker M1 (gender, number), file 10,
# angry utterance 10. Dev only: speech in a language the English recogniser does not know, for choices.
URDU_NAME = re.compile(r"S([MF])(\d+)_F\d+_([AHNS])\d+")
URDU_EMOTIONS = {
    "A": (("angry",), "anger"),
    "H": (("happy",), "happiness"),
    "N": (("neutral",), "neutral"),
    "S": (("sad",), "sadness"),
}

# EMOVO (Costantini et al. 2014), Italian: f1/dis-f1-b1.wav = emotion (Italian initials), speaker (f1-f3, m1-m3),
# sentence (b1-b3, d1-d2, l1-l4, n1-n5: 14 sentences).
EMOVO_NAME = re.compile(r"([a-z]{3})-([fm][1-9])-([bdln]\d)")
EMOVO_EMOTIONS: dict[str, Emotion] = {
    "dis": (("disgusted",), "disgust"),  # disgusto
    "gio": (("happy",), "happiness"),  # gioia
    "neu": (("neutral",), "neutral"),
    "pau": (("fearful",), "fear"),  # paura
    "rab": (("angry",), "anger"),  # rabbia
    "sor": (("surprised",), "surprise"),  # sorpresa
    "tri": (("sad",), "sadness"),  # tristezza
}

# EmoDB (Burkhardt et al. 2005): 03a01Fa.wav = speaker 03, text a01, emotion F (German initial), version a.
EMODB_NAME = re.compile(r"(\d\d)([ab]\d\d)([WLEAFTN])([a-z])")
EMODB_EMOTIONS: dict[str, Emotion] = {
    "W": (("angry",), "anger"),  # Wut / Ärger
    "L": (("bored",), "neutral"),  # Langeweile: low arousal, no basic emotion of its own
    "E": (("disgusted",), "disgust"),  # Ekel
    "A": (("fearful", "anxious"), "fear"),  # Angst
    "F": (("happy",), "happiness"),  # Freude
    "T": (("sad",), "sadness"),  # Trauer
    "N": (("neutral",), "neutral"),
}
EMODB_GENDER = {
    "03": "m",
    "08": "f",
    "09": "f",
    "10": "m",
    "11": "m",
    "12": "m",
    "13": "f",
    "14": "f",
    "15": "m",
    "16": "f",
}

# CREMA-D (Cao et al. 2014): 1001_DFA_ANG_XX.wav = actor, sentence, emotion, intensity (XX: unspecified).
CREMA_D_NAME = re.compile(r"(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})")
CREMA_D_EMOTIONS: dict[str, Emotion] = {
    "ANG": (("angry",), "anger"),
    "DIS": (("disgusted",), "disgust"),
    "FEA": (("fearful",), "fear"),
    "HAP": (("happy",), "happiness"),
    "NEU": (("neutral",), "neutral"),
    "SAD": (("sad",), "sadness"),
}
CREMA_D_INTENSITY = {"LO": "low", "MD": "medium", "HI": "high", "XX": None}
CREMA_D_DEMOGRAPHICS = "VideoDemographics.csv"  # ships with the corpus: ActorID, Age, Sex, Race, Ethnicity

# MEAD (Wang et al. 2020): M003/video/front/angry/level_2/001.mp4 and M003/audio/angry/level_2/001.m4a.
MEAD_PATH = re.compile(r"(?:.*/)?([MW]\d{3})/(?:video/[^/]+|audio)/([a-z]+)/level_([123])/\d{3}\.[0-9a-z]+")
MEAD_EMOTIONS: dict[str, Emotion] = {
    "angry": (("angry",), "anger"),
    # Contempt is not one of the seven families; like most 7-class mappings, count it with disgust.
    "contempt": (("contemptuous",), "disgust"),
    "disgusted": (("disgusted",), "disgust"),
    "fear": (("fearful",), "fear"),
    "happy": (("happy",), "happiness"),
    "neutral": (("neutral",), "neutral"),
    "sad": (("sad",), "sadness"),
    "surprised": (("surprised",), "surprise"),
}
MEAD_INTENSITY = {"1": "low", "2": "medium", "3": "high"}


def read_ravdess(root: Path) -> list[CorpusClip]:
    """RAVDESS speech clips (audio .wav and video .mp4) under `root`; actors 1-16 train, 17-24 test."""
    clips, skipped, songs = [], [], 0
    for path in media_files(root):
        match = RAVDESS_NAME.fullmatch(path.stem)
        actor = int(match.group(7)) if match else 0
        if match is None or not 1 <= actor <= 24 or (match.group(3) == "01" and match.group(4) == "02"):
            skipped.append(path)
            continue
        modality, channel, emotion, intensity = match.group(1, 2, 3, 4)
        if channel == "02":  # sung, not spoken: unlike anything said on a call
            songs += 1
            continue
        labels, family = RAVDESS_EMOTIONS[emotion]
        clips.append(
            CorpusClip(
                path=path,
                labels=labels,
                family=family,
                dataset="ravdess",
                speaker=f"ravdess-{actor:02d}",
                gender="m" if actor % 2 else "f",
                lang="en",
                modality="audio" if modality == "03" else "video",
                split="test" if actor in RAVDESS_TEST_ACTORS else "train",
                intensity=RAVDESS_INTENSITY[intensity],
            )
        )
    if songs:
        log.info("%s: left out %d RAVDESS song clips (vocal channel 02)", root, songs)
    _warn_skipped(root, "RAVDESS", skipped)
    return clips


def read_tess(root: Path) -> list[CorpusClip]:
    """TESS clips under `root`; all train (two speakers are too few to hold one out)."""
    clips, skipped = [], []
    for path in media_files(root):
        match = TESS_NAME.fullmatch(path.stem)
        speaker = TESS_SPEAKERS.get(match.group(1).upper()) if match else None
        emotion = TESS_EMOTIONS.get(match.group(3).lower()) if match else None
        if speaker is None or emotion is None:
            skipped.append(path)
            continue
        labels, family = emotion
        clips.append(
            CorpusClip(path, labels, family, "tess", f"tess-{speaker}", "f", "en", modality_of(path), "train")
        )
    _warn_skipped(root, "TESS", skipped)
    return clips


def read_emovo(root: Path) -> list[CorpusClip]:
    """EMOVO clips under `root`; all train (Italian: the voice head hears another language and studio)."""
    clips, skipped = [], []
    for path in media_files(root):
        match = EMOVO_NAME.fullmatch(path.stem.lower())
        if match is None or match.group(1) not in EMOVO_EMOTIONS:
            skipped.append(path)
            continue
        emotion, speaker, _sentence = match.groups()
        labels, family = EMOVO_EMOTIONS[emotion]
        clips.append(
            CorpusClip(
                path,
                labels,
                family,
                "emovo",
                f"emovo-{speaker}",
                speaker[0],
                "it",
                modality_of(path),
                "train",
            )
        )
    _warn_skipped(root, "EMOVO", skipped)
    return clips


def read_emodb(root: Path) -> list[CorpusClip]:
    """EmoDB clips under `root`; all test: EmoDB is reserved for evaluation."""
    clips, skipped = [], []
    for path in media_files(root):
        match = EMODB_NAME.fullmatch(path.stem)
        if match is None:
            skipped.append(path)
            continue
        speaker, _text, emotion, _version = match.groups()
        labels, family = EMODB_EMOTIONS[emotion]
        gender = EMODB_GENDER.get(speaker)
        clips.append(
            CorpusClip(
                path, labels, family, "emodb", f"emodb-{speaker}", gender, "de", modality_of(path), "test"
            )
        )
    _warn_skipped(root, "EmoDB", skipped)
    return clips


def read_urdu(root: Path) -> list[CorpusClip]:
    """URDU dataset clips under `root`; all dev (choices only: never trained on)."""
    clips, skipped = [], []
    for path in media_files(root):
        match = URDU_NAME.fullmatch(path.stem)
        if match is None:
            skipped.append(path)
            continue
        gender, number, emotion = match.groups()
        labels, family = URDU_EMOTIONS[emotion]
        speaker = f"urdu-{gender.lower()}{number}"
        clips.append(
            CorpusClip(path, labels, family, "urdu", speaker, gender.lower(), "ur", modality_of(path), "dev")
        )
    _warn_skipped(root, "URDU", skipped)
    return clips


def read_crema_d(root: Path) -> list[CorpusClip]:
    """CREMA-D clips (AudioWAV, AudioMP3 or VideoFlash) under `root`; all test: reserved for evaluation.

    Gender comes from the corpus's VideoDemographics.csv when it lies anywhere under `root`.
    """
    genders = crema_d_genders(root)
    clips, skipped = [], []
    for path in media_files(root):
        match = CREMA_D_NAME.fullmatch(path.stem)
        if match is None or match.group(3) not in CREMA_D_EMOTIONS or match.group(4) not in CREMA_D_INTENSITY:
            skipped.append(path)
            continue
        actor, _sentence, emotion, intensity = match.groups()
        labels, family = CREMA_D_EMOTIONS[emotion]
        clips.append(
            CorpusClip(
                path=path,
                labels=labels,
                family=family,
                dataset="crema-d",
                speaker=f"crema-d-{actor}",
                gender=genders.get(actor),
                lang="en",
                modality=modality_of(path),
                split="test",
                intensity=CREMA_D_INTENSITY[intensity],
            )
        )
    _warn_skipped(root, "CREMA-D", skipped)
    return clips


def crema_d_genders(root: Path) -> dict[str, str]:
    """Actor id -> "f"/"m" from the first VideoDemographics.csv under `root`; empty when there is none."""
    table = next(iter(sorted(root.rglob(CREMA_D_DEMOGRAPHICS))), None)
    if table is None:
        log.warning("%s: no %s, so CREMA-D rows carry no gender", root, CREMA_D_DEMOGRAPHICS)
        return {}
    with table.open(newline="", encoding="utf-8") as f:
        return {row["ActorID"]: row["Sex"][:1].lower() for row in csv.DictReader(f)}


def read_mead(root: Path) -> list[CorpusClip]:
    """MEAD clips (every camera view, and the audio) under `root`; all test: reserved for evaluation."""
    clips, skipped = [], []
    for path in media_files(root):
        match = MEAD_PATH.fullmatch(path.relative_to(root).as_posix())
        if match is None or match.group(2) not in MEAD_EMOTIONS:
            skipped.append(path)
            continue
        speaker, emotion, level = match.groups()
        labels, family = MEAD_EMOTIONS[emotion]
        clips.append(
            CorpusClip(
                path=path,
                labels=labels,
                family=family,
                dataset="mead",
                speaker=f"mead-{speaker.lower()}",
                gender="m" if speaker.startswith("M") else "f",
                lang="en",
                modality=modality_of(path),
                split="test",
                intensity=MEAD_INTENSITY[level],
            )
        )
    _warn_skipped(root, "MEAD", skipped)
    return clips


READERS: dict[str, Callable[[Path], list[CorpusClip]]] = {
    "ravdess": read_ravdess,
    "tess": read_tess,
    "emodb": read_emodb,
    "emovo": read_emovo,
    "urdu": read_urdu,
    "crema-d": read_crema_d,
    "mead": read_mead,
}
EXAMPLE_NAMES = {
    "ravdess": "Actor_12/03-01-06-01-02-01-12.wav",
    "tess": "OAF_angry/OAF_back_angry.wav",
    "emodb": "wav/03a01Fa.wav",
    "emovo": "f1/dis-f1-b1.wav",
    "urdu": "Angry/SM1_F10_A010.wav",
    "crema-d": "AudioWAV/1001_DFA_ANG_XX.wav",
    "mead": "M003/video/front/angry/level_2/001.mp4",
}


def withheld(groups: Mapping[str, str], splits: tuple[str, ...] = ("test",)) -> bool:
    """Whether a manifest line may not be learned from: its corpus is reserved for evaluation, or its split is one
    of `splits` (test; training also refuses dev, which is for choices)."""
    return groups.get("dataset", "").lower() in EVALUATION_ONLY or groups.get("split") in splits


def corpus_clips(corpus: str, root: Path, split: str = "all") -> list[CorpusClip]:
    """The labelled clips of `corpus` under `root` in `split` (train, test or all), sorted by path.

    Raises CorpusError for an unknown corpus, a missing or empty folder, or a train split of a corpus that is
    reserved for evaluation.
    """
    if corpus not in READERS:
        raise CorpusError(f"unknown corpus {corpus!r}; known: {', '.join(READERS)}")
    if split not in (*SPLITS, "all"):
        raise CorpusError(f"unknown split {split!r}; use train, dev, test or all")
    if split == "train" and corpus in EVALUATION_ONLY:
        raise CorpusError(
            f"{corpus} is reserved for evaluation: it is never trained or tuned on, so it has no train split "
            "(use --split test or --split all)"
        )
    if not root.is_dir():
        raise CorpusError(f"no such folder: {root}")
    clips = READERS[corpus](root.resolve())
    if not clips:
        raise CorpusError(f"no {corpus} clips under {root} (expected names like {EXAMPLE_NAMES[corpus]})")
    chosen = [clip for clip in clips if split in ("all", clip.split)]
    if not chosen:
        raise CorpusError(f"{len(clips)} {corpus} clips under {root}, none of them in the {split} split")
    return chosen


def write_manifest(clips: Iterable[CorpusClip], out: Path) -> int:
    """Write the clips as JSON lines to `out`, paths relative to its folder; the number of lines written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = out.parent.resolve()
    lines = [json.dumps(clip.row(folder), ensure_ascii=False) for clip in clips]
    out.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


def count_table(clips: Iterable[CorpusClip]) -> str:
    """Clips per class (first label and family) and split, then speakers per split, as a text table."""
    clips = list(clips)
    splits = [split for split in SPLITS if any(clip.split == split for clip in clips)]
    per_class = Counter((clip.labels[0], clip.family, clip.split) for clip in clips)
    classes = sorted(
        {(label, family) for label, family, _ in per_class}, key=lambda c: (FAMILIES.index(c[1]), c[0])
    )
    lines = [f"{'label':<12}{'family':<11}" + "".join(f"{split:>7}" for split in splits) + f"{'all':>7}"]
    for label, family in classes:
        counts = [per_class[label, family, split] for split in splits]
        lines.append(f"{label:<12}{family:<11}" + "".join(f"{n:>7}" for n in counts) + f"{sum(counts):>7}")
    totals = [sum(clip.split == split for clip in clips) for split in splits]
    lines.append(f"{'clips':<23}" + "".join(f"{n:>7}" for n in totals) + f"{len(clips):>7}")
    speakers = [{clip.speaker for clip in clips if clip.split == split} for split in splits]
    every = {clip.speaker for clip in clips}
    lines.append(f"{'speakers':<23}" + "".join(f"{len(s):>7}" for s in speakers) + f"{len(every):>7}")
    genders = Counter(next(c.gender for c in clips if c.speaker == s) or "?" for s in every)
    modalities = Counter(clip.modality for clip in clips)
    by_gender = ", ".join(f"{gender} {n}" for gender, n in sorted(genders.items()))
    by_modality = ", ".join(f"{modality} {n}" for modality, n in sorted(modalities.items()))
    lines.append(f"speakers by gender: {by_gender}; clips by modality: {by_modality}")
    return "\n".join(lines)


def media_files(root: Path) -> Iterator[Path]:
    """Audio and video files under `root`, in a stable order; hidden files (e.g. macOS ._ twins) are not."""
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in AUDIO_SUFFIXES | VIDEO_SUFFIXES and not path.name.startswith("."):
            if path.is_file():
                yield path


def modality_of(path: Path) -> str:
    return "video" if path.suffix.lower() in VIDEO_SUFFIXES else "audio"


def _warn_skipped(root: Path, corpus: str, skipped: list[Path]) -> None:
    if skipped:
        example = skipped[0].relative_to(root)
        log.warning(
            "%s: %d media files are not %s clips and were left out, e.g. %s",
            root,
            len(skipped),
            corpus,
            example,
        )
