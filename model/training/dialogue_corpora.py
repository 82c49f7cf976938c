"""Manifests of labelled text and dialogue corpora (MELD, EmoryNLP, GoEmotions): one reader per corpus."""

from __future__ import annotations

import ast
import csv
import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from model.emotion.vocabulary import FAMILIES

DIALOGUE_SPLITS = ("train", "dev", "test")

# MELD (Poria et al. 2019): Friends dialogues, Ekman's six + neutral, and a sentiment per utterance. The
# labels are the vocabulary's words for its emotions; joy is the happiness family.
MELD_EMOTIONS: dict[str, tuple[str, str]] = {
    "anger": ("angry", "anger"),
    "disgust": ("disgusted", "disgust"),
    "fear": ("fearful", "fear"),
    "joy": ("joyful", "happiness"),
    "sadness": ("sad", "sadness"),
    "surprise": ("surprised", "surprise"),
    "neutral": ("neutral", "neutral"),
}
MELD_SENTIMENT = {"positive": 1, "neutral": 0, "negative": -1}

# EmoryNLP (Zahiri & Choi 2018): Friends scenes labelled with the six primary emotions of Willcox's feeling
# wheel plus neutral. The wheel files proud, confident, hopeful, appreciated under Powerful and content,
# thoughtful, loving, trusting under Peaceful: both are positive states, happiness being the only positive
# basic family (MELD, on the same show, calls such lines joy or neutral). Scared (anxious, insecure,
# helpless) is fear, Mad (hurt, hostile, critical) anger. The wheel has no surprise or disgust.
EMORYNLP_EMOTIONS: dict[str, tuple[str, str]] = {
    "Joyful": ("joyful", "happiness"),
    "Peaceful": ("peaceful", "happiness"),
    "Powerful": ("confident", "happiness"),
    "Scared": ("scared", "fear"),
    "Mad": ("mad", "anger"),
    "Sad": ("sad", "sadness"),
    "Neutral": ("neutral", "neutral"),
}

# GoEmotions (Demszky et al. 2020): Reddit comments, 27 emotions + neutral, multi-label. Its authors' Ekman
# mapping (the `data/ekman` files of GoEmotions-pytorch agree with it on every comment):
GOEMOTIONS_LABELS: tuple[str, ...] = (
    "admiration", "amusement", "anger", "annoyance", "approval", "caring", "confusion", "curiosity", "desire",
    "disappointment", "disapproval", "disgust", "embarrassment", "excitement", "fear", "gratitude", "grief",
    "joy", "love", "nervousness", "optimism", "pride", "realization", "relief", "remorse", "sadness",
    "surprise", "neutral",
)  # fmt: skip
GOEMOTIONS_FAMILY: dict[str, str] = {
    **dict.fromkeys(("anger", "annoyance", "disapproval"), "anger"),
    "disgust": "disgust",
    **dict.fromkeys(("fear", "nervousness"), "fear"),
    **dict.fromkeys(
        (
            "joy",
            "amusement",
            "approval",
            "excitement",
            "gratitude",
            "love",
            "optimism",
            "relief",
            "pride",
            "admiration",
            "desire",
            "caring",
        ),
        "happiness",
    ),  # fmt: skip
    **dict.fromkeys(("sadness", "disappointment", "embarrassment", "grief", "remorse"), "sadness"),
    **dict.fromkeys(("surprise", "realization", "confusion", "curiosity"), "surprise"),
    "neutral": "neutral",
}
GOEMOTIONS_EKMAN = (
    "anger",
    "disgust",
    "fear",
    "joy",
    "neutral",
    "sadness",
    "surprise",
)  # data/ekman/labels.txt
# The vocabulary's word for each fine label, where it has one (so a learned label can be shown by its word)
GOEMOTIONS_WORDS: dict[str, str] = {
    "admiration": "admiring", "amusement": "amused", "anger": "angry", "annoyance": "annoyed",
    "approval": "accepting", "caring": "caring", "confusion": "confused", "curiosity": "curious",
    "desire": "longing", "disappointment": "disappointed", "disapproval": "unconvinced", "disgust": "disgusted",
    "embarrassment": "embarrassed", "excitement": "excited", "fear": "fearful", "gratitude": "grateful",
    "grief": "grieving", "joy": "joyful", "love": "loving", "nervousness": "nervous", "optimism": "optimistic",
    "pride": "proud", "realization": "surprised", "relief": "relieved", "remorse": "remorseful",
    "sadness": "sad", "surprise": "surprised", "neutral": "neutral",
}  # fmt: skip

_TYPOGRAPHIC = str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"', "—": " - ", "–": "-", "…": "..."})
_NOT_WORD = re.compile(r"[^\w\s']+")


class DialogueCorpusError(ValueError):
    """A corpus or folder that cannot become a manifest; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class DialogueLine:
    """One labelled utterance (or comment) of a text corpus: a manifest row."""

    text: str
    family: str  # one of FAMILIES: the basic emotion the corpus means (the first, where it gives several)
    labels: tuple[str, ...]  # the corpus's fine labels (GoEmotions) or the vocabulary's word for its label
    dataset: str
    split: str  # train, dev or test, as the corpus splits it
    dialogue: str | None = None  # "<dataset>-<split>-<id>": unique over corpora and splits
    turn: int | None = None  # order within the dialogue, from 0
    speaker: str | None = None
    valence: int | None = None  # sign, where the corpus gives one (MELD's sentiment): 1, 0 or -1
    families: tuple[str, ...] = ()  # every family the labels fall in (GoEmotions is multi-label)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES or any(f not in FAMILIES for f in self.families):
            raise ValueError(f"family {self.family!r} / {self.families} not in {FAMILIES}")
        if self.split not in DIALOGUE_SPLITS:
            raise ValueError(f"bad split {self.split!r}")

    def row(self) -> dict[str, object]:
        """The manifest line (fields the corpus does not give are left out)."""
        row: dict[str, object] = {"text": self.text, "family": self.family, "labels": list(self.labels)}
        if len(self.families) > 1:
            row["families"] = list(self.families)
        if self.valence is not None:
            row["sentiment"] = self.valence  # a sign, not a valence on -1..1 (eval reads it as no affect)
        for key in ("dialogue", "turn", "speaker"):
            value = getattr(self, key)
            if value is not None:
                row[key] = value
        row["dataset"], row["modality"], row["split"] = self.dataset, "text", self.split
        return row


def asr_like(text: str) -> str:
    """The text as a live transcript might read: lower case, no punctuation but apostrophes, single spaces."""
    plain = _NOT_WORD.sub(" ", text.translate(_TYPOGRAPHIC).lower())
    return " ".join(plain.split())


def read_meld(root: Path) -> list[DialogueLine]:
    """`{train,dev,test}_sent_emo.csv` under `root` (or `root/data/MELD`); the test file may be absent."""
    lines: list[DialogueLine] = []
    for split in DIALOGUE_SPLITS:
        path = _find(root, f"{split}_sent_emo.csv", ("data/MELD", "MELD"))
        if path is None:
            continue
        for row in _csv_rows(
            path, ("Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID")
        ):
            label, family = _mapped(MELD_EMOTIONS, row["Emotion"].strip().lower(), path)
            lines.append(
                DialogueLine(
                    text=_clean(row["Utterance"]),
                    family=family,
                    labels=(label,),
                    dataset="meld",
                    split=split,  # the test file's rows are always "test": reserved for evaluation
                    dialogue=f"meld-{split}-{int(row['Dialogue_ID'])}",
                    turn=int(row["Utterance_ID"]),
                    speaker=row["Speaker"].strip(),
                    valence=MELD_SENTIMENT[row["Sentiment"].strip().lower()],
                )
            )
    return _in_dialogue_order(lines)


def read_emorynlp(root: Path) -> list[DialogueLine]:
    """`emorynlp_{train,dev,test}_final.csv` under `root` (or `root/data/emorynlp`); a scene is a dialogue."""
    lines: list[DialogueLine] = []
    for split in DIALOGUE_SPLITS:
        path = _find(root, f"emorynlp_{split}_final.csv", ("data/emorynlp", "emorynlp"))
        if path is None:
            continue
        columns = ("Utterance", "Speaker", "Emotion", "Scene_ID", "Utterance_ID", "Season", "Episode")
        for row in _csv_rows(path, columns):
            label, family = _mapped(EMORYNLP_EMOTIONS, row["Emotion"].strip(), path)
            scene = f"s{int(row['Season'])}e{int(row['Episode'])}c{int(row['Scene_ID'])}"
            lines.append(
                DialogueLine(
                    text=_clean(row["Utterance"]),
                    family=family,
                    labels=(label,),
                    dataset="emorynlp",
                    split=split,
                    dialogue=f"emorynlp-{split}-{scene}",
                    turn=int(row["Utterance_ID"]) - 1,  # EmoryNLP counts from 1
                    speaker=_emorynlp_speaker(row["Speaker"]),
                )
            )
    return _in_dialogue_order(lines)


def read_goemotions(root: Path) -> list[DialogueLine]:
    """`original/{train,dev,test}.tsv` (text, label ids, comment id) under `root` or `root/data`.

    The family comes from `ekman/<split>.tsv` where it is there (the authors' mapping), else from
    GOEMOTIONS_FAMILY; a comment whose labels fall in several families keeps them all in `families`.
    """
    lines: list[DialogueLine] = []
    for split in DIALOGUE_SPLITS:
        path = _find(root, f"{split}.tsv", ("data/original", "original"))
        if path is None:
            continue
        ekman_path = _find(root, f"{split}.tsv", ("data/ekman", "ekman"))
        ekman = {row[2]: row[1] for row in _tsv_rows(ekman_path)} if ekman_path else {}
        for text, ids, comment in _tsv_rows(path):
            labels = tuple(GOEMOTIONS_LABELS[int(i)] for i in ids.split(","))
            if comment in ekman:
                named = (GOEMOTIONS_EKMAN[int(i)] for i in ekman[comment].split(","))
                families = tuple(dict.fromkeys("happiness" if f == "joy" else f for f in named))
            else:
                families = tuple(dict.fromkeys(GOEMOTIONS_FAMILY[label] for label in labels))
            lines.append(
                DialogueLine(
                    text=_clean(text),
                    family=families[0],
                    labels=labels,
                    dataset="goemotions",
                    split=split,
                    speaker=None,
                    families=families,
                )
            )
    return lines


DIALOGUE_READERS: dict[str, Callable[[Path], list[DialogueLine]]] = {
    "meld": read_meld,
    "emorynlp": read_emorynlp,
    "goemotions": read_goemotions,
}
EXPECTED_FILES = {
    "meld": "data/MELD/train_sent_emo.csv",
    "emorynlp": "data/emorynlp/emorynlp_train_final.csv",
    "goemotions": "data/original/train.tsv",
}


def dialogue_lines(corpus: str, root: Path, split: str = "all") -> list[DialogueLine]:
    """The labelled lines of `corpus` under `root` in `split` (train, dev, test or all)."""
    if corpus not in DIALOGUE_READERS:
        raise DialogueCorpusError(f"unknown corpus {corpus!r}; known: {', '.join(DIALOGUE_READERS)}")
    if split not in (*DIALOGUE_SPLITS, "all"):
        raise DialogueCorpusError(f"unknown split {split!r}; use train, dev, test or all")
    if not root.is_dir():
        raise DialogueCorpusError(f"no such folder: {root}")
    lines = DIALOGUE_READERS[corpus](root.resolve())
    if not lines:
        raise DialogueCorpusError(f"no {corpus} files under {root} (expected e.g. {EXPECTED_FILES[corpus]})")
    return [line for line in lines if split in ("all", line.split)]


def write_dialogue_manifest(corpus: str, root: Path, out: Path, split: str = "all") -> list[DialogueLine]:
    """Write `corpus`'s lines under `root` as JSON lines to `out`; the lines written (for count tables)."""
    lines = dialogue_lines(corpus, Path(root), split)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(line.row(), ensure_ascii=False) + "\n" for line in lines)
    out.write_text(text, encoding="utf-8")
    return lines


def read_dialogue_manifest(path: Path) -> list[DialogueLine]:
    """The lines of a manifest written by write_dialogue_manifest."""
    lines = []
    for number, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
            lines.append(
                DialogueLine(
                    text=row["text"],
                    family=row["family"],
                    labels=tuple(row["labels"]),
                    dataset=row["dataset"],
                    split=row["split"],
                    dialogue=row.get("dialogue"),
                    turn=row.get("turn"),
                    speaker=row.get("speaker"),
                    valence=row.get("sentiment"),
                    families=tuple(row.get("families", [row["family"]])),
                )
            )
        except (KeyError, ValueError, TypeError) as error:
            raise DialogueCorpusError(f"{path}:{number}: not a text manifest line ({error})") from error
    return lines


def dialogue_count_table(lines: Sequence[DialogueLine]) -> str:
    """Lines per family and split, then dialogues per split, as a text table."""
    splits = [s for s in DIALOGUE_SPLITS if any(line.split == s for line in lines)]
    counts = Counter((line.family, line.split) for line in lines)
    table = [f"{'family':<11}" + "".join(f"{s:>8}" for s in splits) + f"{'all':>8}"]
    for family in FAMILIES:
        row = [counts[family, s] for s in splits]
        if sum(row):
            table.append(f"{family:<11}" + "".join(f"{n:>8}" for n in row) + f"{sum(row):>8}")
    totals = [sum(line.split == s for line in lines) for s in splits]
    table.append(f"{'lines':<11}" + "".join(f"{n:>8}" for n in totals) + f"{len(lines):>8}")
    dialogues = [len({line.dialogue for line in lines if line.split == s and line.dialogue}) for s in splits]
    if any(dialogues):
        table.append(f"{'dialogues':<11}" + "".join(f"{n:>8}" for n in dialogues) + f"{sum(dialogues):>8}")
    return "\n".join(table)


def dialogues(lines: Iterable[DialogueLine]) -> list[list[DialogueLine]]:
    """Lines grouped by dialogue, each in turn order (lines without a dialogue are left out)."""
    grouped: dict[str, list[DialogueLine]] = {}
    for line in lines:
        if line.dialogue is not None:
            grouped.setdefault(line.dialogue, []).append(line)
    return [sorted(group, key=lambda line: line.turn or 0) for group in grouped.values()]


def _find(root: Path, name: str, folders: Sequence[str]) -> Path | None:
    for folder in ("", *folders):
        path = root / folder / name
        if path.is_file():
            return path
    return None


def _csv_rows(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    missing = [c for c in columns if rows and c not in rows[0]]
    if missing:
        raise DialogueCorpusError(f"{path}: missing columns {missing}")
    return rows


def _tsv_rows(path: Path) -> list[tuple[str, str, str]]:
    rows = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = raw.split("\t")
        if len(fields) != 3:
            raise DialogueCorpusError(f"{path}:{number}: expected text, label ids and id separated by tabs")
        rows.append((fields[0], fields[1], fields[2]))
    return rows


def _mapped(table: dict[str, tuple[str, str]], emotion: str, path: Path) -> tuple[str, str]:
    if emotion not in table:
        raise DialogueCorpusError(f"{path}: unknown emotion {emotion!r}; known: {', '.join(table)}")
    return table[emotion]


def _clean(text: str) -> str:
    """Typographic quotes and dashes as a transcript writes them, whitespace collapsed."""
    return " ".join(text.translate(_TYPOGRAPHIC).split())


def _emorynlp_speaker(raw: str) -> str:
    """EmoryNLP writes speakers as a Python list ("['Monica Geller']"); several speak together."""
    try:
        names = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw.strip()
    return " & ".join(str(n) for n in names) if isinstance(names, list) else str(names)


def _in_dialogue_order(lines: list[DialogueLine]) -> list[DialogueLine]:
    order = {split: i for i, split in enumerate(DIALOGUE_SPLITS)}
    return sorted(lines, key=lambda line: (order[line.split], _natural(line.dialogue or ""), line.turn or 0))


def _natural(name: str) -> tuple[object, ...]:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def main(argv: Sequence[str] | None = None) -> int:
    """python -m model.training.dialogue_corpora meld|emorynlp|goemotions ROOT OUT [SPLIT]"""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (3, 4):
        print(main.__doc__, file=sys.stderr)
        return 2
    lines = write_dialogue_manifest(args[0], Path(args[1]), Path(args[2]), *args[3:])
    print(dialogue_count_table(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
