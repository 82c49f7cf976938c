"""Manifests of labelled face images (FER2013, facial_expressions): one reader per corpus → image manifest rows.

Each corpus is split three ways: `train` (the face head learns on it), `dev` (every choice: features,
hyper-parameters, epochs) and `test` (held out: scored once, at the end, never used for a choice). FER2013
keeps its own train / val / test partition (val → dev). facial_expressions has none and repeats people
(520 photos of one person), so its split is by person: a hash of the person's name picks the part, and a
person's photos are never on two sides.

Subsampling is deterministic: within each (split, family) the images are ordered by a hash of their name and
the first `cap` kept, so a larger cap only adds images.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from model.emotion.vocabulary import FAMILIES

log = logging.getLogger(__name__)

FACE_SPLITS = ("train", "dev", "test")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})

Emotion = tuple[tuple[str, ...], str]  # (vocabulary labels, most fitting first; basic family)

# FER2013's seven classes (Goodfellow et al. 2013), as FaceExp names its folders.
FER2013_EMOTIONS: dict[str, Emotion] = {
    "angry": (("angry",), "anger"),
    "disgust": (("disgusted",), "disgust"),
    "fear": (("fearful",), "fear"),
    "happy": (("happy",), "happiness"),
    "neutral": (("neutral",), "neutral"),
    "sad": (("sad",), "sadness"),
    "surprise": (("surprised",), "surprise"),
}
FER2013_SPLITS = {"train": "train", "val": "dev", "test": "test"}

# facial_expressions' legend.csv labels (one annotator wrote them in capitals). "contempt" (9 images) has no
# basic family of its own and is left out rather than forced into disgust or anger.
FACIAL_EXPRESSIONS_EMOTIONS: dict[str, Emotion] = {
    "anger": (("angry",), "anger"),
    "disgust": (("disgusted",), "disgust"),
    "fear": (("fearful",), "fear"),
    "happiness": (("happy",), "happiness"),
    "neutral": (("neutral",), "neutral"),
    "sadness": (("sad",), "sadness"),
    "surprise": (("surprised",), "surprise"),
}
# A person's name is the file name less its trailing photo number: George_W_Bush_0012.jpg, Dileep_65.jpg.
PERSON_NAME = re.compile(r"^(.*?)(?:[_\-.]*\d+[a-z]?)?$")
# Shares of people per part: hash(person) mod 10 → 0-5 train, 6-7 dev, 8-9 test.
PERSON_PARTS = ("train",) * 6 + ("dev",) * 2 + ("test",) * 2


class FaceCorpusError(ValueError):
    """A face corpus folder that cannot become a manifest; the message says what was expected."""


@dataclass(frozen=True, slots=True)
class LabelledImage:
    """One labelled face image: a manifest row before its path is written relative to the manifest."""

    path: Path  # absolute
    labels: tuple[str, ...]  # emotion-vocabulary words, most fitting first
    family: str  # one of FAMILIES
    dataset: str
    split: str  # one of FACE_SPLITS
    person: str | None = None  # "<dataset>-<name>" where the corpus names people

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family {self.family!r} is not one of {FAMILIES}")
        if self.split not in FACE_SPLITS:
            raise ValueError(f"split {self.split!r} is not one of {FACE_SPLITS}")

    def row(self, manifest_dir: Path) -> dict[str, str | list[str]]:
        """The manifest line, its image relative to the manifest's folder."""
        row: dict[str, str | list[str]] = {
            "clip": Path(os.path.relpath(self.path, manifest_dir)).as_posix(),
            "family": self.family,
            "labels": list(self.labels),
            "dataset": self.dataset,
            "split": self.split,
            "modality": "image",
        }
        if self.person is not None:
            row["person"] = self.person
        return row


def read_fer2013(root: Path) -> list[LabelledImage]:
    """FaceExp's copy of FER2013: ROOT/split/{train,val,test}/<class>/*.jpg (48 px grey faces scaled to 224)."""
    split_dir = root / "split"
    if not split_dir.is_dir():
        raise FaceCorpusError(f"{root}: expected FER2013 as split/{{train,val,test}}/<class>/*.jpg")
    images = []
    for part, split in FER2013_SPLITS.items():
        for class_dir in sorted((split_dir / part).glob("*")):
            emotion = FER2013_EMOTIONS.get(class_dir.name.lower())
            if emotion is None:
                log.warning("fer2013: unknown class folder %s left out", class_dir)
                continue
            labels, family = emotion
            images += [
                LabelledImage(path.resolve(), labels, family, "fer2013", split)
                for path in sorted(class_dir.iterdir())
                if path.suffix.lower() in IMAGE_SUFFIXES
            ]
    return images


def read_facial_expressions(root: Path) -> list[LabelledImage]:
    """muxspace/facial_expressions: ROOT/data/legend.csv (user.id, image, emotion) and ROOT/images/."""
    legend = root / "data" / "legend.csv"
    if not legend.is_file():
        raise FaceCorpusError(f"{root}: expected data/legend.csv and images/ (muxspace/facial_expressions)")
    labelled: dict[str, set[str]] = defaultdict(set)
    with legend.open(newline="") as stream:
        for record in csv.DictReader(stream):
            labelled[record["image"].strip()].add(record["emotion"].strip().lower())
    images, dropped = [], Counter[str]()
    for name, emotions in sorted(labelled.items()):
        path = root / "images" / name
        if len(emotions) != 1:
            dropped["labelled twice, differently"] += 1
            continue
        emotion = FACIAL_EXPRESSIONS_EMOTIONS.get(next(iter(emotions)))
        if emotion is None:
            dropped[f"label {next(iter(emotions))!r}"] += 1
            continue
        if not path.is_file():
            dropped["image missing"] += 1
            continue
        person = person_of(name)
        labels, family = emotion
        images.append(
            LabelledImage(
                path.resolve(),
                labels,
                family,
                "facial_expressions",
                part_of(person),
                person=f"facial_expressions-{person}",
            )
        )
    if dropped:
        log.info("facial_expressions: left out %s", dict(dropped))
    return images


def person_of(file_name: str) -> str:
    """The person a photo shows, from its file name: George_W_Bush_0012.jpg → george_w_bush."""
    stem = Path(file_name).stem
    match = PERSON_NAME.match(stem)
    name = match.group(1) if match and match.group(1) else stem
    return name.lower()


def part_of(person: str) -> str:
    """The split a person's photos all go to (a stable hash: the same on any machine and any subset)."""
    return PERSON_PARTS[int(_digest(person), 16) % len(PERSON_PARTS)]


def capped(images: Iterable[LabelledImage], caps: Mapping[str, int]) -> list[LabelledImage]:
    """At most caps[split] images per (dataset, split, family), chosen by a hash of the file name."""
    groups: dict[tuple[str, str, str], list[LabelledImage]] = defaultdict(list)
    for image in images:
        groups[(image.dataset, image.split, image.family)].append(image)
    kept = []
    for (_, split, _), members in sorted(groups.items()):
        members.sort(key=lambda image: _digest(f"{image.dataset}/{image.path.name}"))
        kept += members[: caps.get(split, len(members))]
    return kept


FACE_CORPORA = {"fer2013": read_fer2013, "facial_expressions": read_facial_expressions}
# Images kept per (split, family), chosen by a hash of the file name (MediaPipe costs ~25 ms an image here);
# fixed before any run
FACE_CAPS: dict[str, dict[str, int]] = {
    "fer2013": {"train": 800, "dev": 200, "test": 150},
    "facial_expressions": {"train": 1200, "dev": 300, "test": 100},
}


def face_images(corpus: str, root: Path) -> list[LabelledImage]:
    reader = FACE_CORPORA.get(corpus)
    if reader is None:
        raise FaceCorpusError(f"unknown face corpus {corpus!r}; expected one of {sorted(FACE_CORPORA)}")
    return reader(root)


def write_face_manifest(images: Iterable[LabelledImage], out: Path) -> int:
    """JSON lines, one image each, paths relative to the manifest's folder; returns the count."""
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.dumps(image.row(out.parent.resolve())) for image in images]
    out.write_text("".join(row + "\n" for row in rows))
    return len(rows)


def load_face_manifest(path: Path) -> list[LabelledImage]:
    """The images of a manifest written by write_face_manifest (paths made absolute again)."""
    images = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        images.append(
            LabelledImage(
                path=(path.parent / row["clip"]).resolve(),
                labels=tuple(row["labels"]),
                family=row["family"],
                dataset=row["dataset"],
                split=row["split"],
                person=row.get("person"),
            )
        )
    return images


def count_table(images: Iterable[LabelledImage]) -> dict[str, dict[str, dict[str, int]]]:
    """dataset → split → family → images."""
    table: dict[str, dict[str, dict[str, int]]] = {}
    for image in images:
        by_family = table.setdefault(image.dataset, {}).setdefault(image.split, {})
        by_family[image.family] = by_family.get(image.family, 0) + 1
    return table


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()
