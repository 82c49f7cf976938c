"""Overload: how late speech runs (the event loop, the audio at the VAD), and the one place that decides what work
to shed for it."""

from __future__ import annotations

import asyncio

from stream import metrics

TICK_S = 0.1  # how often the loop's lag is measured (and the shedding decided)
# At the least, one sampled face frame in five is still analysed: presence, the speaking face and expressions
# longer than a few frames survive (micro-expressions, < 500 ms, may be missed).
MIN_FACE_SHARE = 0.2
# The share comes back by this much a calm tick (from the floor to everything in ~1.6 s): slower than it goes,
# so that a load that lasts does not make it swing.
RECOVERY_STEP = 0.05


class Shedder:
    """Decides, from how late speech runs, what overload sheds so that speech keeps its pace.

    VAD, speech.start/end and final transcripts run on (or are fed from) the event loop and are never shed. Each
    tick, the lateness that counts is the worst of two: how late the loop ran its timer, and how late any
    participant's audio reached the VAD (a loop on time can still be handed its audio late). When it is
    `shed_lag_s` or more, the work that only competes with speech is shed, in this order:
      1. face-analysis frames: the share of sampled frames analysed halves each late tick, down to
         MIN_FACE_SHARE (face analysis is the largest load after ASR, its Python code holds the GIL the loop
         needs, and a face read at a few frames a second still says who speaks and how they look);
      2. interim updates (transcripts of speech still going on), for as long as any face frame is shed, when
         they share the final transcripts' ASR (audio.asr.interim_backend: same): there they only ever make the
         final transcripts wait. On their own worker and model (moonshine: ~20 ms of CPU a second of speech,
         about a twentieth of a Whisper pass) they are shed only once face frames are at their floor.
    A tick within half of `shed_lag_s` gives back RECOVERY_STEP of the share. The LLM stage sheds on its own
    (emotion.llm.max_pending), and the ASR skips interim work whenever final work waits (Transcribe).

    Pure and synchronous: fed lags, it answers; `watch_loop_lag` and ScoreSpeech feed it on a live server."""

    def __init__(
        self,
        shed_lag_s: float,
        *,
        min_face_share: float = MIN_FACE_SHARE,
        recovery_step: float = RECOVERY_STEP,
    ) -> None:
        self.shed_lag_s = shed_lag_s
        self.min_face_share = min_face_share
        self.recovery_step = recovery_step
        self.face_share = (
            1.0  # of the face frames sampled (video.analysis_fps, max_total_fps), those analysed
        )
        self._audio_lag_s = 0.0  # the most any participant's audio was late at the VAD since the last tick

    def note_audio_lag(self, lag_s: float) -> None:
        """How late a chunk of audio reached the VAD (any participant's); the worst of a tick counts."""
        self._audio_lag_s = max(self._audio_lag_s, lag_s)

    def tick(self, loop_lag_s: float) -> None:
        """Once a tick: the loop's lag and the worst audio lag since the last tick decide."""
        self.observe(max(loop_lag_s, self._audio_lag_s))
        self._audio_lag_s = 0.0

    def observe(self, lag_s: float) -> None:
        if lag_s >= self.shed_lag_s:
            self.face_share = max(self.min_face_share, self.face_share / 2)
        elif lag_s <= self.shed_lag_s / 2:
            self.face_share = min(1.0, self.face_share + self.recovery_step)
        metrics.FACE_SHARE.set(self.face_share)

    @property
    def shedding(self) -> bool:
        return self.face_share < 1.0

    @property
    def interim_allowed(self) -> bool:
        return not self.shedding

    @property
    def cheap_interim_allowed(self) -> bool:
        """Interim updates on their own cheap worker: shed only when face frames can be shed no further."""
        return self.face_share > self.min_face_share


class FrameShare:
    """One participant's sampled face frames, thinned evenly to the shedder's share now; each frame shed is
    counted (microemo_shed_total{work="face_frames"})."""

    def __init__(self, shedder: Shedder | None) -> None:
        self._shedder = shedder
        self._credit = 0.0

    def keep(self) -> bool:
        if self._shedder is None:
            return True
        self._credit = min(1.0, self._credit + self._shedder.face_share)
        if self._credit >= 1.0 - 1e-9:
            self._credit -= 1.0
            return True
        metrics.SHED.labels("face_frames").inc()
        return False


async def watch_loop_lag(shedder: Shedder | None, tick_s: float = TICK_S) -> None:
    """Until cancelled: how late the loop runs a timer due every tick_s (in /metrics), told to the shedder."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + tick_s
        await asyncio.sleep(tick_s)
        lag = max(0.0, loop.time() - due)
        metrics.LOOP_LAG.observe(lag)
        if shedder is not None:
            shedder.tick(lag)
