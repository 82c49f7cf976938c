"""Kept frames as the visual encoder's input: a live utterance's face window (and decoded training clips)."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from model.face.micro import FaceWindow
from model.microemo.clip import ClipFeatures


def as_clip_features(
    frames: np.ndarray, times: np.ndarray, crops: np.ndarray, mask: np.ndarray
) -> ClipFeatures:
    """(T, S, S, 3) uint8 frames, (T,) float64 times, (T, s, s, 3) uint8 crops, (T,) bool → channels first."""
    return ClipFeatures(
        frames=torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous(),  # (T, 3, S, S) uint8
        frame_times=torch.from_numpy(times),  # (T,) float64
        face_crops=torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous(),  # (T, 3, s, s) uint8
        face_mask=torch.from_numpy(mask),  # (T,) bool
    )


def crop_of_size(crop: np.ndarray, size: int) -> np.ndarray:
    """An aligned face crop (s, s, 3) uint8 resized to (size, size, 3) where the analyzer made it another size."""
    if crop.shape[:2] == (size, size):
        return crop
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def features_from_window(window: FaceWindow, frame_size: int, crop_size: int) -> ClipFeatures | None:
    """A live utterance's kept frames as the encoder's input (None when the window kept none).

    The frames were kept on the training grid (VideoAnalysis with WholeFrames); times count from the first,
    as in a training clip; crops are resized to crop_size where the face analyzer made them another size.
    """
    if not window.frames:
        return None
    frames = np.stack([kept.image for kept in window.frames])  # (T, S, S, 3) uint8
    if frames.shape[1:3] != (frame_size, frame_size):
        raise ValueError(
            f"kept frames are {frames.shape[2]}x{frames.shape[1]}, the encoder takes {frame_size}"
        )
    crops = np.zeros((len(frames), crop_size, crop_size, 3), dtype=np.uint8)
    mask = np.zeros(len(frames), dtype=bool)
    for k, kept in enumerate(window.frames):
        if kept.face is not None:
            crops[k], mask[k] = crop_of_size(kept.face, crop_size), True
    times = np.array([kept.t for kept in window.frames], dtype=np.float64)
    return as_clip_features(frames, times - times[0], crops, mask)
