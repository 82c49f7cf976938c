"""`microemo train-heads MANIFEST... --out DIR`: labelled clips → voice features → trained heads (.npz).

Refuses clips reserved for evaluation (a corpus in EVALUATION_ONLY, or a line with split "test"), so a head
is never trained on what its scores are measured with. Reports speaker-grouped cross-validated scores: each
utterance read by a head that never heard its speaker.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from model.emotion.heads import save_heads
from model.emotion.vocabulary import FAMILIES, EmotionVocabulary
from model.training.corpora import EVALUATION_ONLY
from model.training.evaluation import LabelledClip, family_of, load_manifest
from model.training.fit_heads import (
    HeadConfig,
    LabelledFeatures,
    fit_fusion,
    out_of_fold_readings,
    scores,
    train_mlp,
)
from model.training.voice_features import extract_voice

log = logging.getLogger(__name__)
HEADS_VERSION = 1


class ReservedClipError(ValueError):
    """A training manifest names a clip reserved for evaluation."""


def training_clips(manifests: list[Path]) -> list[LabelledClip]:
    """The manifests' recordings (their text lines train the text head: model/training/fit_text.py)."""
    clips = [clip for manifest in manifests for clip in load_manifest(manifest) if clip.clip is not None]
    for clip in clips:
        dataset = clip.groups.get("dataset", "").lower()
        if dataset in EVALUATION_ONLY or clip.groups.get("split") == "test":
            raise ReservedClipError(
                f"{clip.name}: reserved for evaluation (dataset {dataset or '?'}, split "
                f"{clip.groups.get('split', '?')}); train on split 'train' lines only"
            )
    return clips


def train_heads(
    manifests: list[Path], out: Path, config: HeadConfig, features: Path | None = None
) -> dict[str, Any]:
    """Trains the heads on every utterance of the manifests' clips; writes OUT/heads.npz and OUT/report.json.

    `features`: the voice feature cache (default OUT/voice_features.npz)."""
    clips = training_clips(manifests)
    vocabulary = EmotionVocabulary.load()
    heard = extract_voice(
        [c.clip for c in clips if c.clip is not None], features or out / "voice_features.npz"
    )
    rows: list[npt.NDArray[np.float32]] = []
    families: list[int] = []
    speakers: list[str] = []
    datasets: list[str] = []
    unheard = []
    for clip, clip_voice in zip(clips, heard, strict=True):
        if not len(clip_voice.features):
            unheard.append(clip.name)  # the VAD heard no speech: nothing the live pipeline would read either
            continue
        family = FAMILIES.index(clip.family or family_of(clip.labels, vocabulary))
        for utterance in clip_voice.features:
            rows.append(utterance)
            families.append(family)
            speakers.append(clip.groups.get("speaker", str(clip.clip.parent) if clip.clip else clip.name))
            datasets.append(clip.groups.get("dataset", "?"))
    if not rows:
        raise ValueError("no clip of the manifests has speech the VAD hears: nothing to train on")
    data = LabelledFeatures(
        features=np.stack(rows),
        families=np.array(families, dtype=np.int64),
        speakers=speakers,
        groups={"dataset": datasets},
    )
    log.info("training on %d utterances of %d speakers", len(rows), len(set(speakers)))
    readings = out_of_fold_readings(data, config)
    predicted = np.array([int(np.argmax(r.log_probs)) for r in readings])
    fusion = fit_fusion({"voice": readings}, data.families, config)
    voice = train_mlp(data, config)
    meta = {
        "name": f"heads/{HEADS_VERSION}",
        "families": list(FAMILIES),
        "voice_features": int(data.features.shape[1]),
        "face": None,  # no labelled real face video here to learn a face head: the rules' face vote stands in
        "config": asdict(config),
        "trained_on": {
            "manifests": [m.name for m in manifests],
            "clips": len(clips),
            "utterances": len(rows),
            "speakers": len(set(speakers)),
            "by_dataset": dict(Counter(datasets)),
            "by_family": {FAMILIES[f]: n for f, n in sorted(Counter(families).items())},
            "clips_without_speech": len(unheard),
        },
        "cross_validated": {
            "folds": config.folds,
            "voice": scores(data.families, predicted),
            "by_dataset": {
                name: scores(data.families[mask], predicted[mask])
                for name in sorted(set(datasets))
                if (mask := np.array(datasets) == name).any()
            },
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    save_heads(out / "heads.npz", meta, voice, None, fusion)
    (out / "report.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
