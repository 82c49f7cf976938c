"""`python -m model.training.fit_face MANIFEST... --out FILE`: labelled face images → a face head (an Mlp) + report.

The head reads heads.face_features of each still, computed by the live engines (model/training/face_features.py)
with the corpus's resting face as baseline. Training rows are augmented so the head is defined for every input
the live path can give it: `present` (always 1 for a still) is drawn from the range a call produces, and each
row also appears without FER's scores (the live path has none when no crop was kept).

Choices are made on the `dev` split of facial_expressions (faces FER's CNN never saw) by unweighted average
recall; the `test` splits are scored once, for the report, after every choice is made. The report compares the
learned head with the hand-set rules the estimator uses without one (`_tempered(visual_vote(...))`), FER's
argmax alone and the held-out set's majority family.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from model.emotion.clues import MIN_FACE_PRESENT
from model.emotion.estimator import _tempered, visual_vote
from model.emotion.heads import AU_FIELDS, FER_FIELDS, Mlp
from model.emotion.vocabulary import EXPRESSION_FAMILY, FAMILIES
from model.training.face_corpora import LabelledImage, load_face_manifest
from model.training.face_features import StillFace, extract_stills, resting_baseline, still_clues
from model.training.fit_heads import HeadConfig, LabelledFeatures, scores, train_mlp

log = logging.getLogger(__name__)

FACE_HEAD_VERSION = 2
# heads.face_features' order: present, AU_FIELDS, FER_FIELDS, FER-present flag
FEATURE_NAMES: tuple[str, ...] = ("present", *AU_FIELDS, *FER_FIELDS, "expression_present")
_FER = slice(1 + len(AU_FIELDS), 1 + len(AU_FIELDS) + len(FER_FIELDS))
CHOICE_DATASET = "facial_expressions"  # dev choices on faces FER's CNN never saw

# What the choices are made among (each scored on CHOICE_DATASET's dev split)
TRAINING_SETS: dict[str, dict[str, str]] = {  # dataset → "full" | "fer_blind" (its rows only without FER)
    "facial_expressions": {"facial_expressions": "full"},
    "both": {"facial_expressions": "full", "fer2013": "full"},
    # FER's CNN learned FER2013: its scores there are over-confident, so FER2013 teaches the AU part only
    "both, fer2013 fer-blind": {"facial_expressions": "full", "fer2013": "fer_blind"},
}
# No label smoothing: with class weights, torch weighs the smoothing term of *every* row by each class's
# weight, so a rare class (facial_expressions has 16 fearful faces, weight ~30) drew every prediction to itself.
HEAD_CONFIGS: dict[str, HeadConfig] = {
    "h64": HeadConfig(hidden=64, epochs=40, label_smoothing=0.0),
    "h256": HeadConfig(hidden=256, epochs=40, label_smoothing=0.0),
}
# A feature that never varied in training (MediaPipe's cheekSquint stays 0) had its std floored at train_mlp's
# 1e-4; it gets unit scale instead, so a value it takes live is not blown up 10,000 times.
FLOORED_STD = 1.0001e-4


@dataclass(frozen=True)
class FaceSample:
    """A labelled image, the face the live engines found in it (None: none found) and its features."""

    image: LabelledImage
    face: StillFace | None
    features: npt.NDArray[np.float32] | None  # (20,) heads.face_features, None without a face


def read_samples(manifests: Sequence[Path], cache: Path) -> list[FaceSample]:
    """Every image of the manifests with its face; features are added by `with_features`."""
    images = [image for manifest in manifests for image in load_face_manifest(manifest)]
    faces = extract_stills([i.path for i in images], cache)
    return [FaceSample(image, face, None) for image, face in zip(images, faces, strict=True)]


def baselines(samples: Iterable[FaceSample]) -> dict[str, dict[str, float]]:
    """Per dataset: the resting face, the median of its neutral train faces (what a live baseline estimates)."""
    resting: dict[str, list[StillFace]] = {}
    for s in samples:
        if s.face is not None and s.image.split == "train" and s.image.family == "neutral":
            resting.setdefault(s.image.dataset, []).append(s.face)
    return {dataset: resting_baseline(faces) for dataset, faces in sorted(resting.items())}


def with_features(samples: Iterable[FaceSample], base: Mapping[str, Mapping[str, float]]) -> list[FaceSample]:
    from model.emotion.heads import face_features

    out = []
    for s in samples:
        features = None
        if s.face is not None:
            clues = still_clues(s.face, base[s.image.dataset])
            features = face_features(clues.present, clues.action_units, clues.expression)
        out.append(dataclasses.replace(s, features=features))
    return out


def training_rows(
    samples: Sequence[FaceSample], use: Mapping[str, str], seed: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """(N, 20) features and family indices of the train faces, augmented (see the module's docstring)."""
    rng = np.random.default_rng(seed)
    rows, families = [], []
    for s in samples:
        mode = use.get(s.image.dataset)
        if mode is None or s.image.split != "train" or s.features is None:
            continue
        family = FAMILIES.index(s.image.family)
        copies = [without_expression(s.features)]
        if mode == "full":
            copies.append(s.features.copy())
        for row in copies:
            row[0] = rng.uniform(MIN_FACE_PRESENT, 1.0)
            rows.append(row)
            families.append(family)
    return np.stack(rows).astype(np.float32), np.array(families, dtype=np.int64)


def without_expression(features: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The features as the live path gives them when no crop was classified (heads.face_features, expression None)."""
    row = features.copy()
    row[_FER] = 0.0
    row[-1] = 0.0
    return row


# -- the readings compared -----------------------------------------------------------------------
def head_family(head: Mlp, features: npt.NDArray[np.float32]) -> int:
    return int(np.argmax(head.logits(features)))


def rules_family(face: StillFace, baseline: Mapping[str, float]) -> int:
    """What the estimator reads without a face head: the rules' families, tempered (argmax as is)."""
    vote = visual_vote(still_clues(face, baseline))
    reading = _tempered(vote.families if vote is not None else {})
    return int(np.argmax([reading.families[f] for f in FAMILIES]))


def fer_family(face: StillFace) -> int:
    top = max(face.expression, key=face.expression.__getitem__)
    return FAMILIES.index(EXPRESSION_FAMILY[top])


def compare(
    samples: Sequence[FaceSample],
    head: Mlp,
    base: Mapping[str, Mapping[str, float]],
    majority: str,
) -> dict[str, Any]:
    """Scores of the head, the rules, FER's argmax and always-`majority` on the samples with a face."""
    found = [s for s in samples if s.face is not None and s.features is not None]
    truth = np.array([FAMILIES.index(s.image.family) for s in found], dtype=np.int64)
    readings = {
        "head": [head_family(head, s.features) for s in found if s.features is not None],
        "head_without_fer": [
            head_family(head, without_expression(s.features)) for s in found if s.features is not None
        ],
        "rules_tempered": [rules_family(s.face, base[s.image.dataset]) for s in found if s.face is not None],
        "fer_argmax": [fer_family(s.face) for s in found if s.face is not None],
        "majority": [FAMILIES.index(majority)] * len(found),
    }
    result: dict[str, Any] = {
        "images": len(samples),
        "faces_found": len(found),
        "by_family": dict(sorted(Counter(s.image.family for s in found).items())),
        "majority_family": majority,
        "majority_share": round(float(np.mean(truth == FAMILIES.index(majority))), 4) if len(found) else 0.0,
    }
    for name, predicted in readings.items():
        result[name] = scores(truth, np.array(predicted, dtype=np.int64))
    by_head = np.array(readings["head"], dtype=np.int64)
    result["head_recall_by_family"] = {
        FAMILIES[f]: round(float(np.mean(by_head[truth == f] == f)), 4) for f in sorted(set(truth.tolist()))
    }
    return result


def split_of(samples: Iterable[FaceSample], dataset: str, split: str) -> list[FaceSample]:
    return [s for s in samples if s.image.dataset == dataset and s.image.split == split]


def majority_of(samples: Iterable[FaceSample]) -> str:
    counts = Counter(s.image.family for s in samples if s.face is not None)
    return max(sorted(counts), key=counts.__getitem__)


# -- choose, fit, report ---------------------------------------------------------------------------
def choose(samples: Sequence[FaceSample], base: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """Every (training set, head config) candidate trained on train, scored on the dev splits."""
    dev = {d: split_of(samples, d, "dev") for d in sorted({s.image.dataset for s in samples})}
    results = []
    for set_name, use in TRAINING_SETS.items():
        for config_name, config in HEAD_CONFIGS.items():
            head = fit_head(samples, use, config)
            row: dict[str, Any] = {"training_set": set_name, "config": config_name}
            for dataset, part in dev.items():
                row[dataset] = compare(part, head, base, majority_of(part))
            results.append(row)
            log.info(
                "dev %s / %s: %s uar %.3f",
                set_name,
                config_name,
                CHOICE_DATASET,
                row[CHOICE_DATASET]["head"]["uar"],
            )
    best = max(results, key=lambda r: r[CHOICE_DATASET]["head"]["uar"])
    return {"candidates": results, "chosen": {"training_set": best["training_set"], "config": best["config"]}}


def fit_head(samples: Sequence[FaceSample], use: Mapping[str, str], config: HeadConfig) -> Mlp:
    x, y = training_rows(samples, use, config.seed)
    head = train_mlp(LabelledFeatures(x, y, speakers=[""] * len(y)), config)
    unvaried = head.std <= FLOORED_STD  # constant in training: any scale gives the training rows the same 0
    std = np.where(unvaried, 1.0, head.std).astype(np.float32)
    return Mlp(head.mean, std, head.layers)


def fit_face(manifests: Sequence[Path], out: Path, cache: Path, score_test: bool = False) -> dict[str, Any]:
    """Chooses on dev, trains the chosen head on train; writes OUT (.npz) and OUT (.json).

    The test splits are scored only with score_test, once every choice is made."""
    samples = read_samples(manifests, cache)
    base = baselines(samples)
    samples = with_features(samples, base)
    choice = choose(samples, base)
    use = TRAINING_SETS[choice["chosen"]["training_set"]]
    config = HEAD_CONFIGS[choice["chosen"]["config"]]
    head = fit_head(samples, use, config)
    rows = training_rows(samples, use, config.seed)[1]
    datasets = sorted({s.image.dataset for s in samples})
    held_out: dict[str, Any] = {}
    for dataset in datasets if score_test else []:
        part = split_of(samples, dataset, "test")
        if part:
            held_out[dataset] = compare(part, head, base, majority_of(part))
    meta = {
        "name": f"face/{FACE_HEAD_VERSION}",
        "families": list(FAMILIES),
        "features": list(FEATURE_NAMES),
        "baselines": base,
        "baseline_rule": "per dataset, per signal: median over the neutral-labelled faces of its train split",
        "chosen": choice["chosen"],
        "config": asdict(config),
        "trained_on": {
            "manifests": [m.name for m in manifests],
            "rows": int(len(rows)),
            "by_dataset": {
                d: dict(
                    sorted(
                        Counter(
                            s.image.family for s in split_of(samples, d, "train") if s.features is not None
                        ).items()
                    )
                )
                for d in datasets
                if d in use
            },
        },
        "faces_found": {
            d: {
                split: f"{sum(s.face is not None for s in part)}/{len(part)}"
                for split in ("train", "dev", "test")
                if (part := split_of(samples, d, split))
            }
            for d in datasets
        },
        "dev": choice["candidates"],
        "test": held_out if score_test else "not scored (run with --score-test once choices are final)",
    }
    save_face_head(out, head, meta)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def save_face_head(path: Path, head: Mlp, meta: Mapping[str, Any]) -> None:
    """The head's arrays under heads.py's names for a face head (face.mean, face.std, face.<i>.weight/bias)."""
    arrays: dict[str, npt.NDArray[Any]] = {
        "meta": np.array(json.dumps(dict(meta))),
        "face.mean": head.mean,
        "face.std": head.std,
    }
    for i, (weight, bias) in enumerate(head.layers):
        arrays[f"face.{i}.weight"], arrays[f"face.{i}.bias"] = weight, bias
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)  # type: ignore[arg-type]


def load_face_head(path: Path) -> Mlp:
    """The face Mlp of a file written by save_face_head (or of a heads file that has one)."""
    with np.load(path, allow_pickle=False) as stored:
        layers: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]] = []
        while f"face.{len(layers)}.weight" in stored.files:
            i = len(layers)
            layers.append((stored[f"face.{i}.weight"], stored[f"face.{i}.bias"]))
        return Mlp(stored["face.mean"], stored["face.std"], layers)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifests", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=Path("/work/data/cache/face_stills.npz"))
    parser.add_argument("--score-test", action="store_true", help="score the held-out test splits (once)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    torch.set_num_threads(1)  # a shared 2-core machine; the heads are tiny
    meta = fit_face(args.manifests, args.out, args.cache, score_test=args.score_test)
    dev = [
        {
            "set": c["training_set"],
            "config": c["config"],
            **{d: c[d]["head"] for d in c if isinstance(c[d], dict)},
        }
        for c in meta["dev"]
    ]
    print(json.dumps({"dev": dev, "chosen": meta["chosen"], "test": meta["test"]}, indent=2))


if __name__ == "__main__":
    main()
