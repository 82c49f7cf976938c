"""Tracked faces over time → rolling per-face buffers → face windows: region signals and micro/macro episodes."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.face.landmarks import FaceObservation
from model.face.signals import REGION_SIGNALS, face_signals
from model.settings import MicroSettings

EXPRESSIVE: tuple[str, ...] = tuple(s.name for s in REGION_SIGNALS if s.expressive)
HEAD_SIGNALS: tuple[str, ...] = tuple(s.name for s in REGION_SIGNALS if s.group == "head") + ("head_motion",)
BLINK = "blink"
# Eye closure drags these along (MediaPipe's eyeSquint jumps and decays for ~0.4 s after a blink, eyeWide drops,
# browDown twitches), so their episodes that start during a blink are the blink, not an expression.
BLINK_CONFOUNDED = frozenset({"eye_tighten", "eye_widen", "cheek_raise", "brow_lower"})


@dataclass(frozen=True, slots=True)
class MicroEpisode:
    """One facial action in one region: rest (onset) -> peak (apex) -> rest (offset), media seconds."""

    region: str
    onset: float
    apex: float
    offset: float
    intensity: float  # apex rise above the baseline, activation units (blendshape scale)
    kind: str  # "micro" (shorter than micro_max_ms) | "macro"

    @property
    def duration(self) -> float:
        return self.offset - self.onset


@dataclass(frozen=True, slots=True)
class KeptFrame:
    """A whole frame kept for the visual encoder (only when one is configured), and the window's face in it."""

    t: float  # media seconds
    image: np.ndarray  # (S, S, 3) uint8 RGB: the whole frame resized to the encoder's frame_size
    face: np.ndarray | None  # (s, s, 3) uint8 aligned crop of the window's track at t; None: not seen then


@dataclass(frozen=True, slots=True)
class FaceWindow:
    """The face evidence of one track over [t0, t1]."""

    t0: float
    t1: float
    present: float  # fraction of analysed frames in [t0, t1] that show this track
    track: int | None
    regions: dict[str, dict[str, float]]  # signal -> {mean, max, std} of signal - baseline (head_*: raw)
    episodes: list[MicroEpisode]  # expressions and blinks (region "blink"), by onset
    blinks: int
    crops: list[np.ndarray] = field(default_factory=list)  # a few aligned crops (S, S, 3) uint8
    blendshapes: dict[str, float] = field(default_factory=dict)  # window means
    frames: list[KeptFrame] = field(default_factory=list)  # kept whole frames in [t0, t1], by time

    @property
    def expressions(self) -> list[MicroEpisode]:
        return [e for e in self.episodes if e.region != BLINK]

    def to_event_fields(self) -> dict[str, Any]:
        """The face-specific fields of the `face` event (API.md), JSON-ready."""
        return {
            "track": self.track,
            "present": round(self.present, 4),
            "regions": {
                name: {stat: round(float(value), 4) for stat, value in stats.items()}
                for name, stats in self.regions.items()
            },
            "micro": [
                {
                    "region": e.region,
                    "onset": round(e.onset, 3),
                    "apex": round(e.apex, 3),
                    "offset": round(e.offset, 3),
                    "intensity": round(e.intensity, 4),
                    "kind": e.kind,
                }
                for e in self.episodes
            ],
        }


@dataclass(frozen=True, slots=True)
class EpisodeThresholds:
    """How far above its baseline a signal must rise to count, in activation units and robust z-scores."""

    min_amplitude: float = 0.05  # smaller rises are below what blendshapes resolve on a real face
    open_z: float = 5.0
    # Onset: the last frame within 10 % of the apex (and 1 sigma) of the baseline before the rise. Offset: the
    # first of close_frames frames back within 20 % (and 3 sigma); decays have long tails (MediaPipe's
    # landmark tracking and blendshapes relax over ~0.3 s), so "mostly relaxed" ends an episode.
    onset_fraction: float = 0.1
    onset_z: float = 1.0
    offset_fraction: float = 0.2
    offset_z: float = 3.0
    sigma_floor: float = 0.003  # a synthetic or very clean signal has MAD ~0; keep z-scores finite
    close_frames: int = 2  # frames back at rest before an episode closes; one noisy dip does not split it


class _EpisodeDetector:
    """One signal of one track: rolling baseline over frames at rest, and rise-above-baseline episodes."""

    def __init__(
        self,
        region: str,
        thresholds: EpisodeThresholds,
        baseline_s: float,
        min_baseline_s: float,
        micro_max_s: float,
        max_episode_s: float,
    ) -> None:
        self.region = region
        self.th = thresholds
        self.baseline_s = baseline_s
        self.min_baseline_s = min_baseline_s
        self.micro_max_s = micro_max_s
        self.max_episode_s = max_episode_s
        self.quiet: deque[tuple[float, float]] = deque()  # (t, value) of frames at rest
        self.recent: deque[tuple[float, float]] = deque()  # (t, rise above baseline)
        self.base = 0.0
        self.sigma = 0.0
        self.open = False
        self.armed = True
        self.started = 0.0
        self.apex = (0.0, 0.0)
        self.previous_offset = float("-inf")
        self.rest_frames = 0
        self.rest_since = 0.0
        self.away_since: float | None = None

    def update(self, t: float, value: float) -> tuple[float | None, MicroEpisode | None]:
        """Feed one frame; returns (its baseline, or None while still learning; an episode this frame closed)."""
        # The baseline is the last baseline_s of frames at rest, however long ago: while the signal is away
        # from rest (an episode, or a long action pulling it the other way) the rest it left stays the reference.
        while self.quiet and self.quiet[-1][0] - self.quiet[0][0] > self.baseline_s:
            self.quiet.popleft()
        while self.recent and t - self.recent[0][0] > self.max_episode_s + self.baseline_s:
            self.recent.popleft()
        if self.open:
            return self.base, self._follow(t, value - self.base)
        if not self._estimate_baseline():
            self.quiet.append((t, value))
            return None, None
        self._watch(t, value)
        return self.base, None

    def _estimate_baseline(self) -> bool:
        if not self.quiet or self.quiet[-1][0] - self.quiet[0][0] < self.min_baseline_s:
            return False
        values = np.fromiter((v for _, v in self.quiet), dtype=np.float64)
        self.base = float(np.median(values))
        self.sigma = max(1.4826 * float(np.median(np.abs(values - self.base))), self.th.sigma_floor)
        return True

    def _watch(self, t: float, value: float) -> None:
        """A frame outside an episode: open one, count it as rest, or note that the signal is away from rest."""
        rise = value - self.base
        self.recent.append((t, rise))
        open_level = max(self.th.open_z * self.sigma, self.th.min_amplitude)
        # Hysteresis: after an episode the signal must come back near rest before another can open, so the
        # slow tail of one action is not reported as a second.
        if rise <= open_level / 2:
            self.armed = True
        if self.armed and rise > open_level:
            # The baseline freezes for the episode, so the episode cannot absorb into it.
            self.open, self.started, self.apex, self.rest_frames = True, t, (t, rise), 0
        elif abs(rise) <= open_level:
            self.quiet.append((t, value))
            self.away_since = None
        else:
            # Away from rest (a tail, or another action pulling the other way, as a smile lifts what a frown
            # would lower): not rest, or the baseline would follow it and the return would look like a rise.
            # Held longer than max_episode_s, it is the new rest.
            self.away_since = t if self.away_since is None else self.away_since
            if t - self.away_since > self.max_episode_s:
                self._relearn()

    def _follow(self, t: float, rise: float) -> MicroEpisode | None:
        """A frame inside the open episode: track the apex, close once back at rest for close_frames frames."""
        self.recent.append((t, rise))
        if rise > self.apex[1]:
            self.apex = (t, rise)
        if rise <= self._offset_level():
            self.rest_since = t if self.rest_frames == 0 else self.rest_since
            self.rest_frames += 1
        else:
            self.rest_frames = 0
        if self.rest_frames >= self.th.close_frames:
            return self._close(self.rest_since)
        if t - self.started > self.max_episode_s:
            # A change held this long is the new normal: report it and re-learn the baseline from here.
            episode = self._close(t)
            self._relearn()
            return episode
        return None

    def _relearn(self) -> None:
        self.quiet.clear()
        self.away_since = None
        self.armed = True

    def _offset_level(self) -> float:
        # It closes a live episode, so it must clear the noise or episodes would linger.
        return max(self.th.offset_fraction * self.apex[1], self.th.offset_z * self.sigma)

    def _onset_level(self) -> float:
        # Looking back from the apex a low level costs nothing: noise before the rise does not move the onset.
        return max(self.th.onset_fraction * self.apex[1], self.th.onset_z * self.sigma)

    def _onset(self) -> float:
        level = self._onset_level()
        onset = None
        for t, rise in self.recent:
            if t >= self.apex[0]:
                break
            if t >= self.previous_offset and rise <= level:
                onset = t  # the last frame still at rest before the rise
        return onset if onset is not None else self.started

    def _close(self, offset: float) -> MicroEpisode:
        episode = self.ongoing(offset)
        self.open, self.armed, self.previous_offset = False, False, offset
        return episode

    def ongoing(self, offset: float) -> MicroEpisode:
        """The open episode as if it ended at offset."""
        onset = self._onset()
        kind = "micro" if offset - onset < self.micro_max_s else "macro"
        return MicroEpisode(self.region, onset, self.apex[0], offset, self.apex[1], kind)


@dataclass(frozen=True, slots=True)
class _Frame:
    t: float
    rise: dict[str, float]  # expressive signal -> value - baseline (only once a baseline exists)
    head: dict[str, float]  # head_yaw/pitch/roll degrees, head_motion interocular distances per second
    mouth_open: float
    blendshapes: dict[str, float] | None


class _TrackBuffer:
    def __init__(self, make_detector: Callable[[str], _EpisodeDetector]) -> None:
        self.frames: deque[_Frame] = deque()
        self.crops: deque[tuple[float, np.ndarray]] = deque()
        self.frame_crops: deque[tuple[float, np.ndarray]] = deque()  # (t, crop) at kept whole frames only
        self.episodes: deque[MicroEpisode] = deque()
        self.detectors: dict[str, _EpisodeDetector] = {name: make_detector(name) for name in EXPRESSIVE}
        self.last_center: tuple[float, float, float] | None = None  # t, x, y (pixels)


class MicroExpressionBuffer:
    """Per-track rolling signals and expression episodes, bounded to the last buffer_s seconds.

    Feed it from the analysis worker: mark_frame(t) for every analysed frame, keep_frame(t, image) for the
    frames the visual encoder will see (if any, before that frame's faces), push(obs) for every tracked face.
    Query it per utterance with window(t0, t1). Thread-safe: one writer, any readers.
    """

    def __init__(
        self,
        buffer_s: float,
        micro: MicroSettings | None = None,
        *,
        min_baseline_s: float = 0.5,
        max_episode_s: float = 6.0,
        blink_pad_s: float = 0.1,
        crop_interval_s: float = 0.5,
        max_crops: int = 4,
    ) -> None:
        """buffer_s: the history kept (video.buffer_s); micro: the episode settings (video.micro)."""
        micro = micro or MicroSettings()
        self.buffer_s = buffer_s
        self.blink_pad_s = blink_pad_s
        self.crop_interval_s = crop_interval_s
        self.max_crops = max_crops
        self._thresholds = EpisodeThresholds(min_amplitude=micro.min_amplitude, open_z=micro.open_z)
        self._detector_args = (micro.baseline_s, min_baseline_s, micro.max_ms / 1000.0, max_episode_s)
        self._tracks: dict[int, _TrackBuffer] = {}
        self._frame_times: deque[float] = deque()
        self._kept: deque[tuple[float, np.ndarray]] = deque()  # (t, whole frame (S, S, 3) uint8)
        self._latest = float("-inf")
        self._lock = threading.Lock()

    def _new_detector(self, region: str) -> _EpisodeDetector:
        return _EpisodeDetector(region, self._thresholds, *self._detector_args)

    def mark_frame(self, t: float) -> None:
        """An analysed frame at media time t (with or without faces), for `present`."""
        with self._lock:
            self._mark(t)

    def _mark(self, t: float) -> None:
        if not self._frame_times or t > self._frame_times[-1]:
            self._frame_times.append(t)
        self._latest = max(self._latest, t)
        self._prune()

    def keep_frame(self, t: float, image: np.ndarray) -> None:
        """A whole frame (S, S, 3) uint8 for the visual encoder; the faces pushed next for t keep their crops."""
        with self._lock:
            self._kept.append((t, image))
            self._latest = max(self._latest, t)
            self._prune()

    def push(self, obs: FaceObservation) -> None:
        """One tracked face of an analysed frame (obs.track assigned by FaceTracker)."""
        signals = obs.signals or face_signals(obs.landmarks, obs.blendshapes, obs.pose)
        with self._lock:
            self._mark(obs.t)
            buffer = self._tracks.get(obs.track)
            if buffer is None:
                buffer = self._tracks[obs.track] = _TrackBuffer(self._new_detector)
            rise: dict[str, float] = {}
            for name, detector in buffer.detectors.items():
                baseline, episode = detector.update(obs.t, signals.values[name])
                if baseline is not None:
                    rise[name] = signals.values[name] - baseline
                if episode is not None:
                    buffer.episodes.append(episode)
            head = {name: signals.values[name] for name in ("head_yaw", "head_pitch", "head_roll")}
            head["head_motion"] = self._head_speed(buffer, obs.t, signals.center, signals.interocular)
            buffer.frames.append(_Frame(obs.t, rise, head, signals.values["mouth_open"], obs.blendshapes))
            if obs.aligned is not None and (
                not buffer.crops or obs.t - buffer.crops[-1][0] >= self.crop_interval_s
            ):
                buffer.crops.append((obs.t, obs.aligned))
            if obs.aligned is not None and self._kept and self._kept[-1][0] == obs.t:
                buffer.frame_crops.append((obs.t, obs.aligned))

    @staticmethod
    def _head_speed(buffer: _TrackBuffer, t: float, center: tuple[float, float], interocular: float) -> float:
        previous, buffer.last_center = buffer.last_center, (t, *center)
        if previous is None or t <= previous[0] or interocular <= 0:
            return 0.0
        # In interocular distances per second, so near and far faces compare.
        distance = float(np.hypot(center[0] - previous[1], center[1] - previous[2])) / interocular
        return distance / (t - previous[0])

    def _prune(self) -> None:
        horizon = self._latest - self.buffer_s
        while self._frame_times and self._frame_times[0] < horizon:
            self._frame_times.popleft()
        while self._kept and self._kept[0][0] < horizon:
            self._kept.popleft()
        for track in list(self._tracks):
            buffer = self._tracks[track]
            while buffer.frames and buffer.frames[0].t < horizon:
                buffer.frames.popleft()
            while buffer.crops and buffer.crops[0][0] < horizon:
                buffer.crops.popleft()
            while buffer.frame_crops and buffer.frame_crops[0][0] < horizon:
                buffer.frame_crops.popleft()
            while buffer.episodes and buffer.episodes[0].offset < horizon:
                buffer.episodes.popleft()
            if not buffer.frames:
                del self._tracks[track]

    def tracks(self, t0: float, t1: float) -> list[int]:
        """Tracks seen in [t0, t1], most frames first."""
        with self._lock:
            return self._tracks_in(t0, t1)

    def _tracks_in(self, t0: float, t1: float) -> list[int]:
        counts = {
            track: sum(1 for f in buffer.frames if t0 <= f.t <= t1) for track, buffer in self._tracks.items()
        }
        return [track for track, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n > 0]

    def mouth_series(self, track: int, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
        """(t (F,), mouth opening (F,)) of one track in [t0, t1], for speaking_track()."""
        with self._lock:
            frames = (
                [f for f in self._tracks[track].frames if t0 <= f.t <= t1] if track in self._tracks else []
            )
        return np.array([f.t for f in frames]), np.array([f.mouth_open for f in frames])

    def window(self, t0: float, t1: float, track: int | None = None) -> FaceWindow:
        """Face evidence over [t0, t1]: of `track`, or of the track seen most in the window."""
        with self._lock:
            if track is None:
                candidates = self._tracks_in(t0, t1)
                track = candidates[0] if candidates else None
            buffer = self._tracks.get(track) if track is not None else None
            analysed = sum(1 for t in self._frame_times if t0 <= t <= t1)
            frames = [f for f in buffer.frames if t0 <= f.t <= t1] if buffer else []
            if buffer is None or not frames or analysed == 0:
                kept = self._kept_in(None, t0, t1)
                return FaceWindow(
                    t0, t1, present=0.0, track=None, regions={}, episodes=[], blinks=0, frames=kept
                )
            episodes = self._episodes_in(buffer, t0, t1)
            crops = [crop for t, crop in buffer.crops if t0 <= t <= t1]
            kept = self._kept_in(buffer, t0, t1)
        return FaceWindow(
            t0=t0,
            t1=t1,
            present=min(1.0, len(frames) / analysed),
            track=track,
            regions=_region_stats(frames),
            episodes=episodes,
            blinks=sum(1 for e in episodes if e.region == BLINK and t0 <= e.onset <= t1),
            crops=_spread(crops, self.max_crops),
            blendshapes=_mean_blendshapes(frames),
            frames=kept,
        )

    def _kept_in(self, buffer: _TrackBuffer | None, t0: float, t1: float) -> list[KeptFrame]:
        """Kept whole frames in [t0, t1], each with the track's crop of that moment (call under the lock)."""
        faces = {t: crop for t, crop in buffer.frame_crops if t0 <= t <= t1} if buffer is not None else {}
        return [KeptFrame(t, image, faces.get(t)) for t, image in self._kept if t0 <= t <= t1]

    def _episodes_in(self, buffer: _TrackBuffer, t0: float, t1: float) -> list[MicroEpisode]:
        episodes = list(buffer.episodes)
        last_t = buffer.frames[-1].t
        for detector in buffer.detectors.values():
            # An episode still rising or held is reported once it is certainly macro; a shorter one may yet be
            # a micro-expression or noise, so it waits for its offset.
            if detector.open and last_t - detector.started >= detector.micro_max_s:
                episodes.append(detector.ongoing(last_t))
        blinks = [e for e in episodes if e.region == BLINK]
        kept = [
            e
            for e in episodes
            if e.onset <= t1
            and e.offset >= t0
            and not (e.region in BLINK_CONFOUNDED and _starts_during(e, blinks, self.blink_pad_s))
        ]
        return sorted(kept, key=lambda e: (e.onset, e.region))


def _starts_during(episode: MicroEpisode, blinks: list[MicroEpisode], pad_s: float) -> bool:
    return any(b.onset - pad_s <= episode.onset <= b.offset + pad_s for b in blinks)


def _stats(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "max": float(array.max()), "std": float(array.std())}


def _region_stats(frames: list[_Frame]) -> dict[str, dict[str, float]]:
    regions: dict[str, dict[str, float]] = {}
    for name in EXPRESSIVE:
        values = [f.rise[name] for f in frames if name in f.rise]
        if values:
            regions[name] = _stats(values)
    for name in HEAD_SIGNALS:
        regions[name] = _stats([f.head[name] for f in frames])
    return regions


def _mean_blendshapes(frames: list[_Frame]) -> dict[str, float]:
    shaped = [f.blendshapes for f in frames if f.blendshapes]
    if not shaped:
        return {}
    return {name: float(np.mean([b.get(name, 0.0) for b in shaped])) for name in shaped[0]}


def _spread(items: list[np.ndarray], count: int) -> list[np.ndarray]:
    if len(items) <= count:
        return items
    picks = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[k] for k in picks]
