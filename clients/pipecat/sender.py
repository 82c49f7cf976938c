"""One participant's media to a MicroEmo server: PCM chunks and RGB images in, a WebRTC (WHIP) peer out.

`put_audio` / `put_image` never wait: they put the media in a bounded queue (when it is full the oldest is
dropped and counted) and the peer's tracks read from it. `run()` connects with POST /whip/{call}?participant=…,
keeps the connection, and reconnects with back-off when the server is gone; `close()` hangs up (DELETE).
aiortc's Opus encoder takes any rate and layout, so audio goes out as the pipeline has it (16 kHz mono from
most transports); its time is the sample count, so dropped chunks leave a gap the server fills with silence."""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90_000  # RTP video clock rate (Hz)
_IMAGE_FORMATS = {"RGB": "rgb24", "RGBA": "rgba", "BGR": "bgr24"}  # pipecat's ImageRawFrame.format → PyAV's


@dataclass(frozen=True, slots=True)
class AudioChunk:
    pcm: bytes  # s16 little-endian, interleaved when num_channels > 1
    rate: int
    channels: int
    first_sample: int  # index of its first sample in the participant's audio, dropped chunks included


@dataclass(frozen=True, slots=True)
class Image:
    pixels: bytes  # (height, width, channels) uint8, row-major
    size: tuple[int, int]  # (width, height)
    format: str  # PyAV pixel format
    pts: int  # 1/VIDEO_CLOCK since the participant's first media


class DroppingQueue:
    """A bounded FIFO whose put never waits: when full, the oldest item makes room and is counted."""

    def __init__(self, maxsize: int) -> None:
        self._queue: asyncio.Queue[AudioChunk | Image] = asyncio.Queue(maxsize)
        self.dropped = 0

    def put(self, item: AudioChunk | Image) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(item)

    async def get(self) -> AudioChunk | Image:
        return await self._queue.get()


class QueueAudioTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, queue: DroppingQueue) -> None:
        super().__init__()
        self._queue = queue

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        chunk = await self._queue.get()
        assert isinstance(chunk, AudioChunk)
        samples = np.frombuffer(chunk.pcm, dtype="<i2").reshape(1, -1)  # packed: (1, n * channels)
        frame = av.AudioFrame.from_ndarray(
            samples, format="s16", layout="stereo" if chunk.channels == 2 else "mono"
        )
        frame.sample_rate = chunk.rate
        frame.pts = chunk.first_sample
        frame.time_base = fractions.Fraction(1, chunk.rate)
        return frame


class QueueVideoTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, queue: DroppingQueue) -> None:
        super().__init__()
        self._queue = queue

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        image = await self._queue.get()
        assert isinstance(image, Image)
        # ~1 ms of copying and colour conversion per 640x480 image: off the loop the pipeline's frames pass on
        return await asyncio.to_thread(video_frame, image)


def video_frame(image: Image) -> av.VideoFrame:
    """The image as the VP8 encoder takes it (yuv420p), stamped with its time."""
    width, height = image.size
    pixels = np.frombuffer(image.pixels, np.uint8).reshape(height, width, -1)
    frame = av.VideoFrame.from_ndarray(pixels, format=image.format).reformat(format="yuv420p")
    frame.pts = image.pts
    frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
    return frame


class MediaSender:
    """A participant of a call on a MicroEmo server, fed by the pipeline; see the module docstring.

    `on_state(connected, reason)` is awaited when the connection comes up or goes down (reason: why)."""

    def __init__(
        self,
        server_url: str,
        call: str,
        participant: str,
        *,
        token: str | None = None,
        video: bool = False,
        max_audio_chunks: int = 100,
        max_images: int = 2,
        on_state: Callable[[bool, str], Awaitable[None]] | None = None,
        connect_timeout_s: float = 10.0,
        max_backoff_s: float = 10.0,
    ) -> None:
        self.server_url, self.call, self.participant = server_url.rstrip("/"), call, participant
        self.video = video
        self.audio = DroppingQueue(max_audio_chunks)
        self.images = DroppingQueue(max_images)
        self.connected = False
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._on_state = on_state
        self._connect_timeout_s = connect_timeout_s
        self._max_backoff_s = max_backoff_s
        self._samples = 0  # audio samples put so far (per channel)
        self._start: float | None = None  # monotonic time of the first media put
        self._ignored_formats: set[str] = set()
        self._pc: RTCPeerConnection | None = None
        self._location: str | None = None

    # -- from the pipeline: never waits --------------------------------------------------------------
    def put_audio(self, pcm: bytes, rate: int, channels: int) -> None:
        if self._start is None:
            self._start = time.monotonic()
        if channels not in (1, 2):
            return  # WebRTC audio is mono or stereo; a transport gives these
        self.audio.put(AudioChunk(pcm, rate, channels, self._samples))
        self._samples += len(pcm) // (2 * channels)

    def put_image(self, pixels: bytes, size: tuple[int, int], fmt: str | None) -> None:
        if not self.video:
            return
        pixel_format = _IMAGE_FORMATS.get(fmt or "RGB")
        if pixel_format is None:
            if fmt not in self._ignored_formats:
                self._ignored_formats.add(str(fmt))
                log.warning(
                    "%s/%s: camera frames in format %r are not sent", self.call, self.participant, fmt
                )
            return
        now = time.monotonic()
        if self._start is None:
            self._start = now
        self.images.put(Image(pixels, size, pixel_format, round((now - self._start) * VIDEO_CLOCK)))

    # -- the connection ------------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, stay connected, reconnect after a failure with back-off (1 s doubling up to max_backoff_s)."""
        backoff = 1.0
        while True:
            reason = "closed"
            try:
                ended = await self._connect()
                backoff = 1.0
                await self._set_state(True, "connected")
                reason = await ended
            except (aiohttp.ClientError, OSError, TimeoutError, ConnectionError) as exc:
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            await self._hang_up()  # (when cancelled, close() hangs up)
            await self._set_state(False, reason)
            await asyncio.sleep(backoff)
            backoff = min(2 * backoff, self._max_backoff_s)

    async def _connect(self) -> asyncio.Future[str]:
        pc = self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.addTrack(QueueAudioTrack(self.audio))
        if self.video:
            pc.addTrack(QueueVideoTrack(self.images))
        ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        connected = asyncio.Event()

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "connected":
                connected.set()
            elif pc.connectionState in ("failed", "closed") and not ended.done():
                ended.set_result(f"WebRTC connection {pc.connectionState}")

        await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers every candidate first
        url = f"{self.server_url}/whip/{self.call}?participant={self.participant}"
        headers = {**self._headers, "Content-Type": "application/sdp"}
        timeout = aiohttp.ClientTimeout(total=self._connect_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            async with http.post(url, data=pc.localDescription.sdp, headers=headers) as response:
                answer = await response.text()
                if response.status != 201:
                    raise ConnectionError(f"WHIP offer refused: {response.status} {answer[:200]}")
                self._location = response.headers.get("Location")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await asyncio.wait_for(connected.wait(), self._connect_timeout_s)
        return ended

    async def _hang_up(self) -> None:
        pc, location, self._pc, self._location = self._pc, self._location, None, None
        if pc is not None:
            await pc.close()
        if location is not None:  # tell the server at once rather than let it notice the silence
            try:
                timeout = aiohttp.ClientTimeout(total=2)
                async with aiohttp.ClientSession(timeout=timeout) as http:
                    async with http.delete(f"{self.server_url}{location}", headers=self._headers):
                        pass
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.info("%s/%s: WHIP DELETE failed (%s)", self.call, self.participant, exc)

    async def _set_state(self, connected: bool, reason: str) -> None:
        self.connected = connected
        if self._on_state is not None:
            await self._on_state(connected, reason)

    async def close(self) -> None:
        await self._hang_up()
        self.connected = False
