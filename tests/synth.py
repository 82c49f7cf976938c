"""Test media: a real face photo animated with landmark-driven warps (brow raise, smile, blink) and ground truth."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

# Crop of skimage's astronaut photo (x0, y0, x1, y1) around her face, scaled up to a webcam-like frame.
_PHOTO_CROP = (65, 5, 385, 245)

# MediaPipe mesh indices that the warps move (sides as seen in the image).
_BROWS = (70, 63, 105, 66, 107, 46, 53, 52, 65, 55, 300, 293, 334, 296, 336, 276, 283, 282, 295, 285)
_MOUTH_CORNERS = (61, 291)
# Upper-lid points and the lower-lid points they close onto, per eye.
_LID_PAIRS = (
    (246, 7), (161, 163), (160, 144), (159, 145), (158, 153), (157, 154), (173, 155),
    (466, 249), (388, 390), (387, 373), (386, 374), (385, 380), (384, 381), (398, 382),
)  # fmt: skip
# The crease ring just above each upper lid follows the lid part of the way.
_CREASE_PAIRS = (
    (247, 246), (30, 161), (29, 160), (27, 159), (28, 158), (56, 157), (190, 173),
    (467, 466), (260, 388), (259, 387), (257, 386), (258, 385), (286, 384), (414, 398),
)  # fmt: skip
_MESH_POINTS = 468  # the iris points (468..477) sit inside the lids and would fold the warp during a blink


@dataclass(frozen=True, slots=True)
class TrueEpisode:
    """What the clip really shows: a facial action between onset and offset (seconds), apex in between."""

    action: str  # "brow_raise" | "smile" | "blink"
    regions: tuple[str, ...]  # detector signals that measure it (model.face.signals names)
    onset: float
    apex: float
    offset: float
    kind: str  # "micro" | "macro"


@dataclass(frozen=True, slots=True)
class SyntheticClip:
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    fps: float
    truth: tuple[TrueEpisode, ...]
    rest_landmarks: np.ndarray  # (478, 2) float32, the undisplaced face in frame pixels

    @property
    def times(self) -> np.ndarray:
        return np.arange(len(self.frames)) / self.fps


@dataclass(frozen=True, slots=True)
class _Action:
    truth: TrueEpisode
    ramp_s: float
    displacement: np.ndarray  # (468, 2) float32 pixels at full activation


def rest_frame(size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """The astronaut photo cropped around the face and scaled to size (W, H): (H, W, 3) uint8."""
    from skimage import data

    x0, y0, x1, y1 = _PHOTO_CROP
    return cv2.resize(data.astronaut()[y0:y1, x0:x1], size, interpolation=cv2.INTER_CUBIC)


@functools.lru_cache(maxsize=4)
def rest_landmarks(size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """The real MediaPipe landmarks (478, 2) of the rest frame, detected once."""
    from model.face.landmarks import MediaPipeFaceAnalyzer

    analyzer = MediaPipeFaceAnalyzer(crop_size=0)
    try:
        faces = analyzer.analyze(rest_frame(size), 0.0)
    finally:
        analyzer.close()
    if not faces:
        raise RuntimeError("MediaPipe found no face in the astronaut photo")
    return faces[0].landmarks


def envelope(t: np.ndarray, onset: float, offset: float, ramp_s: float) -> np.ndarray:
    """0 outside [onset, offset], cosine ramps of ramp_s up and down, 1 in between."""
    rise = np.clip((t - onset) / ramp_s, 0.0, 1.0)
    fall = np.clip((offset - t) / ramp_s, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * np.minimum(rise, fall))


def _brow_raise(points: np.ndarray, iod: float, lift: float) -> np.ndarray:
    """Brows and forehead up by lift * iod; the skin between brow and lid stretches, the lids stay."""
    brows = points[list(_BROWS)]
    brow_y = float(brows[:, 1].mean())
    lid_y = float(points[[upper for upper, _ in _LID_PAIRS], 1].min())
    x_lo, x_hi = brows[:, 0].min() - 0.15 * iod, brows[:, 0].max() + 0.15 * iod
    vertical = np.clip((lid_y - points[:, 1]) / (lid_y - brow_y), 0.0, 1.0)
    outside = np.maximum(x_lo - points[:, 0], points[:, 0] - x_hi).clip(min=0.0)
    horizontal = np.exp(-((outside / (0.2 * iod)) ** 2))
    displacement = np.zeros_like(points)
    displacement[:, 1] = -lift * iod * vertical * horizontal
    return displacement


def _smile(points: np.ndarray, iod: float, lift: float, widen: float) -> np.ndarray:
    """Lip corners up and out; the cheeks and lips around them follow with a Gaussian falloff."""
    center_x = float(points[list(_MOUTH_CORNERS), 0].mean())
    displacement = np.zeros_like(points)
    for corner in _MOUTH_CORNERS:
        outward = math.copysign(1.0, float(points[corner, 0]) - center_x)
        distance = np.linalg.norm(points - points[corner], axis=1)
        weight = np.exp(-0.5 * (distance / (0.28 * iod)) ** 2)[:, None]
        displacement += weight * np.array([outward * widen * iod, -lift * iod])
    return displacement


def _blink(points: np.ndarray, closure: float) -> np.ndarray:
    """Upper lids onto the lower lids (closure 1 = shut); the crease above follows halfway."""
    displacement = np.zeros_like(points)
    for upper, lower in _LID_PAIRS:
        displacement[upper] = closure * (points[lower] - points[upper])
    for crease, upper in _CREASE_PAIRS:
        displacement[crease] = 0.5 * displacement[upper]
    return displacement


class _FaceWarper:
    """Piecewise affine warp over the rest mesh: fixed triangulation, per-frame inverse affines, cv2.remap."""

    def __init__(self, rest: np.ndarray, frame_size: tuple[int, int]) -> None:
        from scipy.spatial import Delaunay

        width, height = frame_size
        x0, y0 = rest.min(axis=0)
        x1, y1 = rest.max(axis=0)
        margin = 0.25 * max(x1 - x0, y1 - y0)
        self.x0, self.y0 = int(max(0, x0 - margin)), int(max(0, y0 - margin))
        self.x1, self.y1 = int(min(width, x1 + margin)), int(min(height, y1 + margin))
        # A fixed ring on the crop border keeps the warp the identity outside the face.
        ring_x = np.linspace(self.x0, self.x1 - 1, 9)
        ring_y = np.linspace(self.y0, self.y1 - 1, 9)
        ring = np.vstack(
            [
                np.column_stack([ring_x, np.full(9, self.y0)]),
                np.column_stack([ring_x, np.full(9, self.y1 - 1)]),
                np.column_stack([np.full(7, self.x0), ring_y[1:-1]]),
                np.column_stack([np.full(7, self.x1 - 1), ring_y[1:-1]]),
            ]
        )
        self.points = np.vstack([rest[:_MESH_POINTS], ring]).astype(np.float64)
        self.triangles = Delaunay(self.points).simplices
        grid_y, grid_x = np.mgrid[self.y0 : self.y1, self.x0 : self.x1]
        self.grid = np.stack([grid_x, grid_y, np.ones_like(grid_x)], axis=-1).astype(np.float32)  # (h, w, 3)

    def warp(self, image: np.ndarray, displacement: np.ndarray) -> np.ndarray:
        """image (H,W,3) uint8 with mesh points moved by displacement (468,2) px -> new image."""
        moved = self.points.copy()
        moved[:_MESH_POINTS] += displacement
        active = np.zeros(len(self.points), dtype=bool)
        active[:_MESH_POINTS] = np.abs(displacement).max(axis=1) > 1e-3
        triangles = self.triangles[active[self.triangles].any(axis=1)]
        if len(triangles) == 0:
            return image
        # Affine taking each moved triangle back onto its rest triangle: [x y 1] @ X = source, X (3, 2).
        dst = np.concatenate([moved[triangles], np.ones((len(triangles), 3, 1))], axis=2)
        keep = np.abs(np.linalg.det(dst)) > 1e-6  # a collapsed triangle (a shut eyelid) covers no pixel
        triangles, dst = triangles[keep], dst[keep]
        affines = np.linalg.solve(dst, self.points[triangles]).transpose(0, 2, 1).astype(np.float32)
        height, width = self.grid.shape[:2]
        labels = np.full((height, width), len(affines), dtype=np.int32)  # default: the identity row below
        corners = np.round((moved[triangles] - [self.x0, self.y0]) * 16).astype(np.int32)
        for label, triangle in enumerate(corners):
            cv2.fillConvexPoly(labels, triangle, label, lineType=cv2.LINE_8, shift=4)
        identity = np.array([[[1, 0, 0], [0, 1, 0]]], dtype=np.float32)
        table = np.concatenate([affines, identity])
        source = np.einsum("hwij,hwj->hwi", table[labels], self.grid)
        out = image.copy()
        out[self.y0 : self.y1, self.x0 : self.x1] = cv2.remap(
            image, np.ascontiguousarray(source), None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
        return out


# Scriptable actions: (regions the detector should see, ramp in s, displacement of the rest mesh).
SCRIPTABLE = ("brow_raise", "smile", "brow_lower", "frown", "blink")


def _scripted(points: np.ndarray, iod: float, name: str, onset: float, offset: float) -> _Action:
    apex = (onset + offset) / 2
    kind = "micro" if offset - onset < 0.5 else "macro"
    ramp = min(0.2, (offset - onset) / 3)
    regions: tuple[str, ...]
    if name == "brow_raise":
        regions, move = ("brow_inner_raise", "brow_outer_raise"), _brow_raise(points, iod, lift=0.12)
    elif name == "brow_lower":  # AU4: the brows pulled down, as in anger or concentration
        regions, move = ("brow_lower",), _brow_raise(points, iod, lift=-0.09)
    elif name == "smile":
        regions, move = ("lip_corner_pull",), _smile(points, iod, lift=0.07, widen=0.05)
    elif name == "frown":  # AU15: lip corners down, as in sadness (the photo smiles at rest: a long way down)
        regions, move = ("lip_corner_depress",), _smile(points, iod, lift=-0.25, widen=-0.05)
    elif name == "blink":
        regions, move = ("blink",), _blink(points, closure=0.95)
    else:
        raise ValueError(f"unknown action {name!r}; one of {SCRIPTABLE}")
    return _Action(TrueEpisode(name, regions, onset, apex, offset, kind), ramp, move)


def _actions(
    rest: np.ndarray,
    expressions: bool,
    blink_at: float | None,
    script: Sequence[tuple[str, float, float]] = (),
) -> list[_Action]:
    points = rest[:_MESH_POINTS].astype(np.float64)
    iod = float(np.linalg.norm(points[[362, 263]].mean(axis=0) - points[[33, 133]].mean(axis=0)))
    actions = [_scripted(points, iod, name, onset, offset) for name, onset, offset in script]
    if expressions:
        brow = TrueEpisode("brow_raise", ("brow_inner_raise", "brow_outer_raise"), 1.00, 1.15, 1.30, "micro")
        smile = TrueEpisode("smile", ("lip_corner_pull",), 2.00, 2.75, 3.50, "macro")
        actions.append(_Action(brow, 0.10, _brow_raise(points, iod, lift=0.12)))
        actions.append(_Action(smile, 0.20, _smile(points, iod, lift=0.07, widen=0.05)))
    if blink_at is not None:
        blink = TrueEpisode("blink", ("blink",), blink_at, blink_at + 0.075, blink_at + 0.15, "micro")
        actions.append(_Action(blink, 0.06, _blink(points, closure=0.95)))
    return actions


def render_clip(
    expressions: bool = True,
    blink_at: float | None = None,
    duration_s: float = 4.0,
    fps: float = 30.0,
    size: tuple[int, int] = (640, 480),
    drift_px: float = 2.0,
    noise_sigma: float = 2.0,
    seed: int = 0,
    script: Sequence[tuple[str, float, float]] = (),
) -> SyntheticClip:
    """Render the astronaut's face as video with ground truth.

    expressions: a micro brow raise at 1.00-1.30 s and a macro smile at 2.00-3.50 s (False: a still face).
    blink_at: onset of a 150 ms blink, if any. script: further (action, onset, offset) of SCRIPTABLE actions. The picture always drifts slowly by about drift_px and carries
    Gaussian sensor noise of noise_sigma grey levels, so a "still" face is never pixel-identical.
    """
    rest = rest_landmarks(size)
    base = rest_frame(size)
    actions = _actions(rest, expressions, blink_at, script)
    warper = _FaceWarper(rest, size)
    rng = np.random.default_rng(seed)
    times = np.arange(int(round(duration_s * fps))) / fps
    frames = np.empty((len(times), size[1], size[0], 3), dtype=np.uint8)
    for k, t in enumerate(times):
        displacement = np.zeros((_MESH_POINTS, 2))
        for action in actions:
            level = envelope(np.array([t]), action.truth.onset, action.truth.offset, action.ramp_s)[0]
            displacement += level * action.displacement
        image = warper.warp(base, displacement)
        # The whole picture drifts slowly (a head swaying by a couple of pixels), with sub-pixel steps.
        shift = np.array(
            [
                [1, 0, drift_px * math.sin(2 * math.pi * t / 4.0)],
                [0, 1, 0.75 * drift_px * math.sin(2 * math.pi * t / 5.0 + 1)],
            ],
            dtype=np.float32,
        )
        image = cv2.warpAffine(image, shift, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        noise = rng.standard_normal(image.shape, dtype=np.float32) * noise_sigma
        frames[k] = np.clip(image + noise, 0, 255).astype(np.uint8)
    return SyntheticClip(frames=frames, fps=fps, truth=tuple(a.truth for a in actions), rest_landmarks=rest)


def write_y4m(path: str | Path, frames: Iterable[np.ndarray], fps: float) -> Path:
    """Frames (H,W,3) uint8 RGB -> YUV4MPEG2 4:2:0 file (what Chromium's --use-file-for-fake-video-capture reads)."""
    path = Path(path)
    rate = Fraction(fps).limit_denominator(1001)
    frame_rate = f"{rate.numerator}:{rate.denominator}"
    with path.open("wb") as out:
        header_written = False
        for frame in frames:
            height, width = frame.shape[:2]
            if width % 2 or height % 2:
                raise ValueError(f"4:2:0 needs even frame sizes, got {width}x{height}")
            if not header_written:
                out.write(f"YUV4MPEG2 W{width} H{height} F{frame_rate} Ip A1:1 C420jpeg\n".encode("ascii"))
                header_written = True
            out.write(b"FRAME\n")
            out.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2YUV_I420).tobytes())
    return path


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float, codec: str = "libx264") -> Path:
    """Frames (H,W,3) uint8 RGB -> a video file through PyAV (container from the suffix, e.g. .mp4)."""
    import av
    from av.video.stream import VideoStream

    path = Path(path)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        stream: VideoStream | None = None
        for frame in frames:
            if stream is None:
                added = container.add_stream(codec, rate=rate)
                if not isinstance(added, VideoStream):
                    raise ValueError(f"{codec} is not a video codec")
                stream = added
                stream.height, stream.width = frame.shape[:2]
                stream.pix_fmt = "yuv420p"
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            container.mux(stream.encode(video_frame))
        if stream is not None:
            container.mux(stream.encode())  # flush the encoder
    return path
