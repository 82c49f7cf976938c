"""Clips as the visual encoder takes them: sampled whole frames, their times and the speaker's face crops."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

from model.microemo.encoder import EncoderConfig


@dataclass(frozen=True, slots=True)
class ClipFeatures:
    """A clip (a training file or a live utterance) as the encoder takes it.

    Pixels stay uint8 (a quarter of float32's memory and cache size); `encoder_batch` scales them to [0, 1].
    """

    frames: Tensor  # (T, 3, S, S) uint8 RGB, whole frames resized to S = EncoderConfig.frame_size
    frame_times: Tensor  # (T,) float64 seconds since the clip's first frame
    face_crops: Tensor  # (T, 3, s, s) uint8 RGB aligned crops, s = EncoderConfig.crop_size; zeros: no face
    face_mask: Tensor  # (T,) bool: True where the speaker's face was found

    def as_dict(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def check_sizes(features: Sequence[ClipFeatures], cfg: EncoderConfig) -> None:
    for clip in features:
        if clip.frames.shape[-1] != cfg.frame_size or clip.face_crops.shape[-1] != cfg.crop_size:
            raise ValueError(
                f"clip features of frame size {clip.frames.shape[-1]} and crop size {clip.face_crops.shape[-1]} "
                f"do not fit the encoder's frame_size {cfg.frame_size} and crop_size {cfg.crop_size}"
            )


def encoder_batch(clips: Sequence[ClipFeatures], device: torch.device) -> dict[str, Tensor]:
    """Clips padded to the longest, as GlobalLocalEncoder's keyword arguments (frame_mask marks padding)."""
    T = max(len(c.frame_times) for c in clips)

    def pad(x: Tensor, value: float | bool = 0) -> Tensor:  # (t, ...) -> (T, ...)
        return F.pad(x, (0, 0) * (x.dim() - 1) + (0, T - len(x)), value=value) if len(x) < T else x

    def stack(name: str) -> Tensor:
        return torch.stack([pad(getattr(c, name)) for c in clips]).to(device)

    return {
        "frames": stack("frames").float() / 255,  # (B, T, 3, S, S)
        "frame_times": stack("frame_times"),  # (B, T) float64
        "face_crops": stack("face_crops").float() / 255,  # (B, T, 3, s, s)
        "face_mask": stack("face_mask"),  # (B, T) bool
        "frame_mask": torch.stack([pad(torch.ones(len(c.frame_times), dtype=torch.bool)) for c in clips]).to(
            device
        ),  # (B, T) bool
    }


def next_grid_time(next_t: float, t: float, fps: float) -> float:
    """When the frame after one kept at t is due: on the 1/fps grid; after a gap longer than a period (dropped
    frames, a variable-rate source) the grid restarts at t, so the next kept frame is a full period later."""
    period = 1 / fps
    return next_t + period if next_t + period > t else t + period
