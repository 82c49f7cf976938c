"""`microemo analyze FILE`: a recorded call through the same stages as a live one, faster than real time."""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
from pathlib import Path
from typing import Any

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from tqdm import tqdm

from model.audio.vad import SileroModel
from model.audio.whisper import make_transcriber
from stream.clock import FileClock
from stream.config import Settings
from stream.emotion.emotion_service import EmotionService
from stream.publish.hub import Hub
from stream.session import PipelineParts, build_session
from stream.transcribe.asr_service import TranscriptionService

log = logging.getLogger(__name__)
_QUEUED_FRAMES = 64  # decoded frames buffered per track ahead of the stages


class FileTrack(MediaStreamTrack):
    """One stream of a file, served like an aiortc track; its frames come from the demuxer thread."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.frames: queue.Queue[av.AudioFrame | av.VideoFrame | None] = queue.Queue(_QUEUED_FRAMES)

    async def recv(self) -> av.AudioFrame | av.VideoFrame:  # type: ignore[override]
        frame = await asyncio.to_thread(self.frames.get)
        if frame is None:
            raise MediaStreamError
        return frame


class FileSource:
    """Demuxes and decodes a file (any container PyAV reads) in a thread, in file order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with av.open(str(path)) as container:
            self.duration_s = float(container.duration or 0) / av.time_base
            self.origin_s = float(container.start_time or 0) / av.time_base
            kinds = [s.type for s in container.streams if s.type in ("audio", "video")]
        if not kinds:
            raise ValueError(f"{path} has no audio or video stream")
        self.tracks: dict[str, FileTrack] = {kind: FileTrack(kind) for kind in dict.fromkeys(kinds)}
        self.position_s = 0.0
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._demux, name="demux", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _advance(self, frame: av.AudioFrame | av.VideoFrame) -> None:
        if frame.pts is not None and frame.time_base is not None:
            self.position_s = max(self.position_s, float(frame.pts * frame.time_base) - self.origin_s)

    def _demux(self) -> None:
        try:
            with av.open(str(self.path)) as container:
                streams = [container.streams.get(**{k: 0})[0] for k in self.tracks]  # type: ignore[arg-type]
                for packet in container.demux(*streams):
                    track = self.tracks[str(packet.stream.type)]
                    for frame in packet.decode():
                        if isinstance(frame, av.AudioFrame | av.VideoFrame):
                            self._advance(frame)
                            track.frames.put(frame)
        except Exception as exc:  # a broken file still closes what was heard so far
            log.error("decoding %s failed: %s", self.path, exc)
            self.error = exc
        finally:
            for track in self.tracks.values():
                track.frames.put(None)


class OfflinePipeline:
    """The models of a live server, loaded once, for any number of files."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.vad_model = SileroModel(settings.audio.vad.threads)
        self.transcriber = make_transcriber(settings.audio.asr)
        self.emotion = (
            EmotionService(settings.emotion, settings.audio.asr.window) if settings.emotion.enabled else None
        )

    async def analyze(
        self,
        path: Path,
        out: Path,
        *,
        call: str = "offline",
        participant: str = "speaker",
        progress: bool = True,
    ) -> list[dict[str, Any]]:
        """Run the file through VAD, ASR, faces and emotion; write every event to `out` (JSONL), return them."""
        settings = self.settings
        source = FileSource(path)
        asr = TranscriptionService(self.transcriber, workers=1, queue_size=settings.audio.asr.queue_size)
        hub = Hub()
        messages: list[dict[str, Any]] = []
        with out.open("w") as sink:

            def write(message: dict[str, Any]) -> None:
                messages.append(message)
                sink.write(json.dumps(message) + "\n")

            hub.add_sink(write)
            parts = PipelineParts(hub, self.vad_model, asr, settings.audio, settings.video, self.emotion)
            session = build_session(
                parts,
                call=call,
                participant=participant,
                session_id="offline",
                clock=FileClock(source.origin_s),
                media_end_reason="end_of_file",
            )
            for track in source.tracks.values():
                session.add_track(track)
            session.connected()
            source.start()
            total = round(source.duration_s, 1)
            with tqdm(total=total, unit="s", desc=path.name, leave=False, disable=not progress) as bar:
                while not session.closed:
                    await asyncio.sleep(0.2)
                    bar.update(round(source.position_s, 1) - bar.n)
                bar.update(bar.total - bar.n)
            await session.close("end_of_file")
        await asr.close()
        if self.emotion is not None:
            self.emotion.end_call(call)  # the next file is another call, even under the same name
            await self.emotion.release_loop()  # its LLM batcher belongs to this event loop
        if source.error is not None:
            raise RuntimeError(
                f"{path}: decoding stopped early ({source.error}); events up to there are in {out}"
            )
        return messages

    def close(self) -> None:
        if self.emotion is not None:
            self.emotion.close()
