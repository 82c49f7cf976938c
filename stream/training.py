"""`microemo train`: a manifest's clips → cached features → encoder, Q-Formers and projector trained on an LLM."""

from __future__ import annotations

from pathlib import Path

from model.train import TrainConfig, TrainResult, check_can_start, target_text, train
from stream.clip_features import extract_manifest


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
    return train(features, [target_text(c) for c in clips], llm_path, out_dir, config, resume, gguf_file)
