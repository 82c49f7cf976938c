"""`microemo train`: a manifest's clips → cached features → encoder, Q-Formers and projector trained on an LLM."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from model.microemo.clip import ClipFeatures
from model.training.clip_features import extract_manifest
from model.training.evaluation import LabelledClip
from model.training.fit_projector import (
    TrainConfig,
    TrainingUtterance,
    TrainResult,
    check_can_start,
    target_text,
    train,
)

log = logging.getLogger(__name__)

CALL_KEY = "call"  # a manifest key naming the call a clip is an utterance of (e.g. a MELD dialogue)


def training_calls(
    clips: Sequence[LabelledClip], features: Sequence[ClipFeatures], config: TrainConfig
) -> list[list[TrainingUtterance]]:
    """Clips as calls: those of one `call` (in manifest order) are its utterances; any other clip is a call
    of its own. The manifest holds no clues or transcript, so their prompt lines read N/A (as calibration's)."""
    calls: dict[str, list[TrainingUtterance]] = {}
    for k, (clip, clip_features) in enumerate(zip(clips, features, strict=True)):
        call = clip.groups.get(CALL_KEY) or f"clip {k}"
        calls.setdefault(call, []).append(TrainingUtterance(clip_features, target_text(clip, config.mode)))
    return list(calls.values())


def train_from_manifest(
    manifest: Path,
    llm_path: Path,
    out_dir: Path,
    config: TrainConfig,
    resume: bool = False,
    gguf_file: str | None = None,
    cache_dir: Path | None = None,
    fps: float = 5.0,
) -> TrainResult:
    """Trains on every clip of a manifest; decoded clips are cached in cache_dir (default out_dir/features)."""
    if not Path(manifest).is_file():
        raise FileNotFoundError(f"manifest not found: {manifest}")
    check_can_start(out_dir, resume, llm_path, gguf_file)  # fail before minutes of decoding
    clips, features = extract_manifest(
        manifest,
        cache_dir or Path(out_dir) / "features",
        fps=fps,
        frame_size=config.encoder.frame_size,
        crop_size=config.encoder.crop_size,
    )
    calls = training_calls(clips, features, config)
    log.info("training on %d clips in %d calls", len(clips), len(calls))
    return train(calls, llm_path, out_dir, config, resume, gguf_file)
