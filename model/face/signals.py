"""Per-frame facial region signals (action-unit-like), head pose and aligned crops from landmarks."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True, slots=True)
class RegionSignal:
    """One per-frame facial signal: its action unit (if one fits), face region and whether it can form episodes."""

    name: str
    action_unit: str
    group: str
    expressive: bool


# Signals are in "activation units": MediaPipe blendshape scores (0..1), or landmark geometry divided by a
# typical full-range excursion (GEOMETRY_RANGE), so one set of detector thresholds serves both backends.
REGION_SIGNALS: tuple[RegionSignal, ...] = (
    RegionSignal("brow_inner_raise", "AU1", "brows", True),
    RegionSignal("brow_outer_raise", "AU2", "brows", True),
    RegionSignal("brow_lower", "AU4", "brows", True),
    RegionSignal("eye_widen", "AU5", "eyes", True),
    RegionSignal("eye_tighten", "AU7", "eyes", True),
    RegionSignal("blink", "AU45", "eyes", True),
    RegionSignal("cheek_raise", "AU6", "cheeks", True),
    RegionSignal("lip_corner_pull", "AU12", "mouth", True),
    RegionSignal("lip_corner_depress", "AU15", "mouth", True),
    RegionSignal("lip_press", "AU24", "mouth", True),
    RegionSignal("mouth_open", "AU25", "mouth", True),
    RegionSignal("jaw_drop", "AU26", "mouth", True),
    RegionSignal("head_yaw", "", "head", False),
    RegionSignal("head_pitch", "", "head", False),
    RegionSignal("head_roll", "", "head", False),
)

# Blendshapes that measure a signal; left/right pairs take the larger side so one-sided actions count.
BLENDSHAPE_SOURCES: dict[str, tuple[str, ...]] = {
    "brow_inner_raise": ("browInnerUp",),
    "brow_outer_raise": ("browOuterUpLeft", "browOuterUpRight"),
    "brow_lower": ("browDownLeft", "browDownRight"),
    "eye_widen": ("eyeWideLeft", "eyeWideRight"),
    "eye_tighten": ("eyeSquintLeft", "eyeSquintRight"),
    "blink": ("eyeBlinkLeft", "eyeBlinkRight"),
    "cheek_raise": ("cheekSquintLeft", "cheekSquintRight"),
    "lip_corner_pull": ("mouthSmileLeft", "mouthSmileRight"),
    "lip_corner_depress": ("mouthFrownLeft", "mouthFrownRight"),
    "lip_press": ("mouthPressLeft", "mouthPressRight"),
    "jaw_drop": ("jawOpen",),
}

# Typical full excursion of each geometric measure in interocular-distance units (adult anthropometry,
# IOD ~ 63 mm): e.g. a full brow raise lifts the brow ~10 mm. Dividing by it puts geometry on the
# blendshapes' 0..1 scale.
GEOMETRY_RANGE: dict[str, float] = {
    "brow_inner_raise": 0.15,
    "brow_outer_raise": 0.15,
    "brow_lower": 0.10,
    "eye_widen": 0.10,
    "eye_tighten": 0.15,
    "blink": 0.30,
    "cheek_raise": 0.06,
    "lip_corner_pull": 0.15,
    "lip_corner_depress": 0.08,
    "lip_press": 0.10,
    "mouth_open": 0.50,
    "jaw_drop": 0.50,
}


@dataclass(frozen=True, slots=True)
class LandmarkScheme:
    """Indices of the facial parts in one landmark layout; sides are as seen in the image (viewer's left)."""

    name: str
    size: int
    anchors: tuple[int, ...]  # stable points (eye corners, nose bridge) used for alignment
    anchor_template: tuple[tuple[float, float], ...]  # canonical positions, interocular units, y down
    lid_upper: tuple[tuple[int, int], tuple[int, int]]  # mid upper-lid points (left, right eye)
    lid_lower: tuple[tuple[int, int], tuple[int, int]]
    eye_corners: tuple[tuple[int, int], tuple[int, int]]  # (outer, inner) per eye
    brow_inner: tuple[int, int]
    brow_outer: tuple[int, int]
    brows: tuple[int, ...]
    nose_tip: int
    chin: int
    mouth_corners: tuple[int, int]
    lip_outer: tuple[int, int]  # upper, lower (vermilion edges, middle)
    lip_inner: tuple[int, int]  # upper, lower (mouth opening, middle)


MEDIAPIPE_478 = LandmarkScheme(
    name="mediapipe_478",
    size=478,
    anchors=(33, 133, 362, 263, 168),
    anchor_template=((-0.71, 0.0), (-0.27, 0.02), (0.27, 0.02), (0.71, 0.0), (0.0, -0.06)),
    lid_upper=((159, 158), (386, 385)),
    lid_lower=((145, 153), (374, 380)),
    eye_corners=((33, 133), (263, 362)),
    brow_inner=(107, 336),
    brow_outer=(70, 300),
    brows=(70, 63, 105, 66, 107, 46, 53, 52, 65, 55, 300, 293, 334, 296, 336, 276, 283, 282, 295, 285),
    nose_tip=1,
    chin=152,
    mouth_corners=(61, 291),
    lip_outer=(0, 17),
    lip_inner=(13, 14),
)

# The iBUG/300-W 68-point layout (dlib, insightface's landmark_3d_68).
IBUG_68 = LandmarkScheme(
    name="ibug_68",
    size=68,
    anchors=(36, 39, 42, 45, 27),
    anchor_template=((-0.71, 0.0), (-0.27, 0.02), (0.27, 0.02), (0.71, 0.0), (0.0, -0.06)),
    lid_upper=((37, 38), (43, 44)),
    lid_lower=((41, 40), (47, 46)),
    eye_corners=((36, 39), (45, 42)),
    brow_inner=(21, 22),
    brow_outer=(17, 26),
    brows=(17, 18, 19, 20, 21, 22, 23, 24, 25, 26),
    nose_tip=30,
    chin=8,
    mouth_corners=(48, 54),
    lip_outer=(51, 57),
    lip_inner=(62, 66),
)

# ArcFace's 5-point template for a 112x112 crop: eye (image left), eye (image right), nose tip, mouth corners.
CROP_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


@dataclass(frozen=True, slots=True)
class FaceSignals:
    """Signals of one face in one frame, plus where the face sits (for head motion)."""

    values: dict[str, float]  # name from REGION_SIGNALS -> activation units (head_*: degrees)
    center: tuple[float, float]  # eye midpoint, pixels
    interocular: float  # pixels


def scheme_for(landmarks: np.ndarray) -> LandmarkScheme:
    """The layout of a landmark array, known from its size (478/468 MediaPipe, 68 iBUG)."""
    count = len(landmarks)
    if count in (468, 478):
        return MEDIAPIPE_478
    if count == 68:
        return IBUG_68
    raise ValueError(f"no landmark scheme for {count} points; expected 478, 468 or 68")


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) taking src (N,2) onto dst (N,2): (2,3)."""
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(cov)
    # Reflection guard: keep a proper rotation even for degenerate point sets.
    d = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1, 1] = -1.0
    rotation = u @ d @ vt
    scale = float(np.trace(np.diag(singular) @ d) / max(src_c.var(axis=0).sum(), 1e-12))
    matrix = np.empty((2, 3), dtype=np.float64)
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """points (N,2) mapped by a (2,3) affine matrix -> (N,2) float64."""
    return points.astype(np.float64) @ matrix[:, :2].T + matrix[:, 2]


def align_landmarks(landmarks: np.ndarray, scheme: LandmarkScheme | None = None) -> np.ndarray:
    """Landmarks (N,2) pixels -> canonical frame (N,2): eyes level, eye midpoint at 0, interocular ~1."""
    scheme = scheme or scheme_for(landmarks)
    template = np.asarray(scheme.anchor_template, dtype=np.float64)
    matrix = umeyama(landmarks[list(scheme.anchors)].astype(np.float64), template)
    return apply_affine(matrix, landmarks)


def _eye_centers(landmarks: np.ndarray, scheme: LandmarkScheme) -> tuple[np.ndarray, np.ndarray]:
    # Midpoints of the eye corners, not of the lid contours: a blink moves the lids, not the corners.
    left = landmarks[list(scheme.eye_corners[0])].astype(np.float64).mean(axis=0)
    right = landmarks[list(scheme.eye_corners[1])].astype(np.float64).mean(axis=0)
    return left, right


def five_points(landmarks: np.ndarray, scheme: LandmarkScheme | None = None) -> np.ndarray:
    """Eye centres, nose tip and mouth corners (5,2) in CROP_TEMPLATE_112's order."""
    scheme = scheme or scheme_for(landmarks)
    left, right = _eye_centers(landmarks, scheme)
    rest = landmarks[[scheme.nose_tip, *scheme.mouth_corners]].astype(np.float64)
    return np.vstack([left, right, rest])


def aligned_crop(frame_rgb: np.ndarray, points5: np.ndarray, size: int = 112) -> np.ndarray:
    """Face crop (size,size,3) uint8 aligned on 5 points (eyes, nose, mouth corners) by a similarity warp."""
    template = CROP_TEMPLATE_112.astype(np.float64) * (size / 112.0)
    matrix = umeyama(points5.astype(np.float64), template)
    return cv2.warpAffine(
        frame_rgb, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def _pair_mean_y(aligned: np.ndarray, pair: tuple[int, int]) -> float:
    return float(aligned[list(pair), 1].mean())


def geometry_signals(landmarks: np.ndarray, scheme: LandmarkScheme | None = None) -> dict[str, float]:
    """Action-unit-like measures from aligned landmark geometry, in activation units (see GEOMETRY_RANGE)."""
    scheme = scheme or scheme_for(landmarks)
    a = align_landmarks(landmarks, scheme)
    y = a[:, 1]
    eye_line = [float(a[list(corners), 1].mean()) for corners in scheme.eye_corners]
    eye_width = [float(np.linalg.norm(a[o] - a[i])) for o, i in scheme.eye_corners]
    # Heights are measured upward (image y grows downward), relative to each eye's corner line.
    inner_brow = np.mean([eye_line[k] - y[scheme.brow_inner[k]] for k in range(2)])
    outer_brow = np.mean([eye_line[k] - y[scheme.brow_outer[k]] for k in range(2)])
    brow_height = float(np.mean(eye_line) - y[list(scheme.brows)].mean())
    aperture = [
        (_pair_mean_y(a, scheme.lid_lower[k]) - _pair_mean_y(a, scheme.lid_upper[k])) / eye_width[k]
        for k in range(2)
    ]
    lower_lid_rise = np.mean([eye_line[k] - _pair_mean_y(a, scheme.lid_lower[k]) for k in range(2)])
    corners = a[list(scheme.mouth_corners)]
    corner_lift = float(a[list(scheme.lip_inner), 1].mean()) - corners[:, 1]  # (2,), up from the lips' middle
    mouth_width = float(np.linalg.norm(corners[1] - corners[0]))
    inner_gap = float(y[scheme.lip_inner[1]] - y[scheme.lip_inner[0]])
    lip_thickness = float(y[scheme.lip_outer[1]] - y[scheme.lip_outer[0]]) - inner_gap
    raw = {
        "brow_inner_raise": inner_brow,
        "brow_outer_raise": outer_brow,
        "brow_lower": -brow_height,
        "eye_widen": max(aperture),
        "eye_tighten": -min(aperture),
        "blink": -min(aperture),
        "cheek_raise": lower_lid_rise,
        # A smile lifts the corners and widens the mouth; half the widening counts, as each corner moves half.
        # The more active corner counts, as with the blendshapes, so one-sided actions show.
        "lip_corner_pull": float(corner_lift.max()) + 0.5 * mouth_width,
        "lip_corner_depress": -float(corner_lift.min()),
        "lip_press": -lip_thickness,
        "mouth_open": inner_gap,
        "jaw_drop": float(y[scheme.chin] - y[scheme.nose_tip]),
    }
    return {name: float(value) / GEOMETRY_RANGE[name] for name, value in raw.items()}


def blendshape_signals(blendshapes: Mapping[str, float]) -> dict[str, float]:
    """Signals that MediaPipe's blendshapes measure directly (missing names are skipped)."""
    values: dict[str, float] = {}
    for name, sources in BLENDSHAPE_SOURCES.items():
        scores = [blendshapes[s] for s in sources if s in blendshapes]
        if scores:
            values[name] = float(max(scores))
    return values


def pose_from_matrix(matrix: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) degrees from a 4x4 (or 3x3) head rotation, as R = Rz(roll) Ry(yaw) Rx(pitch)."""
    r = np.asarray(matrix, dtype=np.float64)[:3, :3]
    r = r / np.cbrt(max(abs(np.linalg.det(r)), 1e-12))
    yaw = math.degrees(math.asin(max(-1.0, min(1.0, -r[2, 0]))))
    pitch = math.degrees(math.atan2(r[2, 1], r[2, 2]))
    roll = math.degrees(math.atan2(r[1, 0], r[0, 0]))
    return yaw, pitch, roll


# The nose tip stands about 0.55 interocular distances in front of the eyes' plane; its sideways (upward)
# offset in the aligned frame is that depth times sin(yaw) (sin(pitch)).
_NOSE_DEPTH_IOD = 0.55


def pose_from_landmarks(
    landmarks: np.ndarray, scheme: LandmarkScheme | None = None
) -> tuple[float, float, float]:
    """Approximate (yaw, pitch, roll) degrees from 2-D landmarks alone (weak perspective; pitch is relative)."""
    scheme = scheme or scheme_for(landmarks)
    left, right = _eye_centers(landmarks, scheme)
    roll = math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))
    a = align_landmarks(landmarks, scheme)
    nose = a[scheme.nose_tip]
    mouth_y = float(a[list(scheme.mouth_corners), 1].mean())
    yaw = math.degrees(math.asin(max(-1.0, min(1.0, nose[0] / _NOSE_DEPTH_IOD))))
    # With the head level the nose tip sits ~60 % of the way from the eye line down to the mouth.
    pitch_offset = (0.6 * mouth_y - nose[1]) / _NOSE_DEPTH_IOD
    pitch = math.degrees(math.asin(max(-1.0, min(1.0, pitch_offset))))
    return yaw, pitch, roll


def face_signals(
    landmarks: np.ndarray,
    blendshapes: Mapping[str, float] | None = None,
    pose: tuple[float, float, float] | None = None,
) -> FaceSignals:
    """All signals of one face: blendshapes where they measure a signal, landmark geometry for the rest."""
    scheme = scheme_for(landmarks)
    values = geometry_signals(landmarks, scheme)
    if blendshapes:
        values.update(blendshape_signals(blendshapes))
    yaw, pitch, roll = pose if pose is not None else pose_from_landmarks(landmarks, scheme)
    values.update(head_yaw=yaw, head_pitch=pitch, head_roll=roll)
    left, right = _eye_centers(landmarks, scheme)
    center = (left + right) / 2.0
    return FaceSignals(
        values=values,
        center=(float(center[0]), float(center[1])),
        interocular=float(np.linalg.norm(right - left)),
    )
