"""Media time of a participant: seconds since its first frame on any track, for live peers and for files."""

from __future__ import annotations

import time


class LiveClock:
    """A live peer's tracks start at different moments; each track's first frame is placed at the wall time
    it arrived (RTP timestamps of two tracks share no origin), later frames by their own pts."""

    realtime = True

    def __init__(self) -> None:
        self.start: float | None = None  # monotonic time of the participant's first frame

    def track_offset(self, first_pts_s: float) -> float:
        now = time.monotonic()
        if self.start is None:
            self.start = now
        return now - self.start

    def since_media_time(self, t: float) -> float | None:
        """Wall seconds elapsed since media time t was live (for latency metrics)."""
        return None if self.start is None else time.monotonic() - self.start - t


class FileClock:
    """A file's streams share one timeline: a track's offset is its first pts from the file's start."""

    realtime = False

    def __init__(self, origin_s: float = 0.0) -> None:
        self.origin_s = origin_s

    def track_offset(self, first_pts_s: float) -> float:
        return max(0.0, first_pts_s - self.origin_s)

    def since_media_time(self, t: float) -> float | None:
        return None


MediaClock = LiveClock | FileClock


def pts_seconds(frame: object) -> float:
    pts, time_base = getattr(frame, "pts", None), getattr(frame, "time_base", None)
    return float(pts * time_base) if pts is not None and time_base else 0.0
