"""A real aiortc peer for tests and benchmarks: streams speech paced in real time, and a video pattern."""

from __future__ import annotations

import asyncio
import fractions
import time

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from stream.serve import patches

FRAME_S = 0.02


class SpeechTrack(MediaStreamTrack):
    """Plays samples once in real time, then silence (a live microphone) until stopped.

    `stall`: (at_s, for_s) — after at_s seconds of audio, send nothing for for_s seconds (a frozen sender whose
    connection stays up), then go on where it stopped."""

    kind = "audio"

    def __init__(self, samples: np.ndarray, rate: int, stall: tuple[float, float] | None = None) -> None:
        super().__init__()
        self._pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
        self._rate = rate
        self._step = round(rate * FRAME_S)
        self._index = 0
        self._stall = stall
        self.started_at: float | None = None  # monotonic time of sample 0
        self.sent_s = 0.0
        self.late_s: list[float] = []  # how late each frame was handed to the sender (a busy peer is late)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.started_at is None:
            self.started_at = time.monotonic()
        if self._stall is not None and self._index * FRAME_S >= self._stall[0]:
            await asyncio.sleep(self._stall[1])
            self.started_at += self._stall[1]
            self._stall = None
        due = self.started_at + self._index * self._step / self._rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        self.late_s.append(max(0.0, time.monotonic() - due))
        begin = self._index * self._step
        chunk = self._pcm[begin : begin + self._step]
        if len(chunk) < self._step:
            chunk = np.concatenate([chunk, np.zeros(self._step - len(chunk), np.int16)])
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="s16", layout="mono")
        frame.sample_rate = self._rate
        frame.pts = begin
        frame.time_base = fractions.Fraction(1, self._rate)
        self._index += 1
        self.sent_s = self._index * FRAME_S
        return frame


class PatternTrack(MediaStreamTrack):
    """A moving gradient at `fps`, or given RGB frames looped."""

    kind = "video"

    def __init__(
        self,
        frames: list[np.ndarray] | None = None,
        fps: int = 15,
        size: tuple[int, int] = (320, 240),
        stop_after_s: float | None = None,
    ):
        super().__init__()
        self._frames = frames
        self._fps = fps
        self._size = size
        self._stop_after_s = stop_after_s  # then send nothing more, the connection up (a frozen camera)
        self._index = 0
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        if self._stop_after_s is not None and self._index / self._fps >= self._stop_after_s:
            await asyncio.Event().wait()  # until the track is stopped (the task is cancelled)
        await asyncio.sleep(max(0.0, self._start + self._index / self._fps - time.monotonic()))
        if self._frames:
            image = self._frames[self._index % len(self._frames)]
        else:
            w, h = self._size
            image = np.zeros((h, w, 3), np.uint8)
            image[..., 0] = (np.arange(w)[None, :] + 4 * self._index) % 256
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = self._index * (90_000 // self._fps)
        frame.time_base = fractions.Fraction(1, 90_000)
        self._index += 1
        return frame


class EncodedVideoTrack(MediaStreamTrack):
    """Encoded VP8 frames (from `encode_vp8`) looped at `fps`, as a camera with a hardware encoder sends them.

    aiortc sends av.Packets as they are, so many such peers cost the machine that runs them almost nothing:
    benchmarks use it to keep the peers' own encoding off the cores the server is measured on."""

    kind = "video"

    def __init__(self, payloads: list[bytes], fps: int = 15) -> None:
        super().__init__()
        self._fps = fps
        self._payloads = payloads
        self._index = 0
        self._start: float | None = None

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        await asyncio.sleep(max(0.0, self._start + self._index / self._fps - time.monotonic()))
        packet = av.Packet(self._payloads[self._index % len(self._payloads)])
        packet.pts = self._index * (90_000 // self._fps)
        packet.time_base = fractions.Fraction(1, 90_000)
        self._index += 1
        return packet


def encode_vp8(frames: list[np.ndarray], fps: int, bitrate: int = 1_000_000) -> list[bytes]:
    """One VP8 payload per frame; the first is a key frame and the only one, so the loop restarts cleanly."""
    height, width = frames[0].shape[:2]
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.time_base = fractions.Fraction(1, fps)
    codec.framerate = fractions.Fraction(fps, 1)
    codec.bit_rate = bitrate
    codec.gop_size = len(frames)
    codec.options = {"deadline": "realtime", "lag-in-frames": "0", "auto-alt-ref": "0"}
    payloads: list[bytes] = []
    for index, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        frame.pts = index
        payloads += [bytes(packet) for packet in codec.encode(frame)]
    payloads += [bytes(packet) for packet in codec.encode(None)]
    if len(payloads) != len(frames):
        raise RuntimeError(f"VP8 encoder gave {len(payloads)} packets for {len(frames)} frames")
    return payloads


class Peer:
    """One participant joining a call over POST /offer, media on loopback only."""

    def __init__(self, base_url: str, call: str, participant: str, token: str | None = None) -> None:
        patches.apply(["127.0.0.1"])
        self.base_url, self.call, self.participant = base_url, call, participant
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.session: str | None = None
        # (monotonic time, RTP timestamp at 48 kHz) of each audio packet as it went on the wire: on a busy
        # machine the peer's own sending can run late, which is not the server's doing
        self.audio_sends: list[tuple[float, int]] = []

    async def join(self, audio: MediaStreamTrack | None, video: MediaStreamTrack | None = None) -> None:
        for track in (audio, video):
            if track is not None:
                self.pc.addTrack(track)
        connected = asyncio.Event()

        @self.pc.on("connectionstatechange")
        def on_state() -> None:
            if self.pc.connectionState == "connected":
                connected.set()

        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {
            "sdp": self.pc.localDescription.sdp,
            "type": "offer",
            "call": self.call,
            "participant": self.participant,
        }
        async with aiohttp.ClientSession() as http:
            # ?call= as our clients send it: a balancer pins the call by it (deploy/haproxy.cfg)
            url = f"{self.base_url}/offer?call={self.call}"
            async with http.post(url, json=body, headers=self.headers) as response:
                answer = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"offer refused: {response.status} {answer}")
        self.session = answer["session"]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        self._watch_audio_sends()  # the transports are final now, and no media has gone yet
        await asyncio.wait_for(connected.wait(), 10)

    def _watch_audio_sends(self) -> None:
        audio = [sender for sender in self.pc.getSenders() if sender.kind == "audio"]
        if not audio:
            return
        transport, ssrc = audio[0].transport, audio[0]._ssrc.to_bytes(4, "big")
        send_rtp = transport._send_rtp

        async def record(data: bytes) -> None:
            await send_rtp(data)
            if len(data) >= 12 and not 72 <= data[1] & 0x7F <= 76 and data[8:12] == ssrc:  # RTP, not RTCP
                self.audio_sends.append((time.monotonic(), int.from_bytes(data[4:8], "big")))

        transport._send_rtp = record  # type: ignore[method-assign]

    async def leave(self) -> None:
        await self.pc.close()


class WhipPeer(Peer):
    """Joins over WHIP (RFC 9725): a complete SDP offer POSTed as application/sdp, 201 + Location back."""

    location: str | None = None

    async def join(self, audio: MediaStreamTrack | None, video: MediaStreamTrack | None = None) -> None:
        for track in (audio, video):
            if track is not None:
                self.pc.addTrack(track)
        await self.pc.setLocalDescription(await self.pc.createOffer())  # aiortc gathers before returning
        url = f"{self.base_url}/whip/{self.call}?participant={self.participant}"
        headers = {**self.headers, "Content-Type": "application/sdp"}
        async with aiohttp.ClientSession() as http:
            async with http.post(url, data=self.pc.localDescription.sdp, headers=headers) as response:
                text = await response.text()
                if response.status != 201:
                    raise RuntimeError(f"WHIP offer refused: {response.status} {text}")
                assert response.content_type == "application/sdp"
                self.location = response.headers["Location"]
        self.session = self.location.rsplit("/", 1)[-1]
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="answer"))

    async def delete(self) -> int:
        async with aiohttp.ClientSession() as http:
            async with http.delete(f"{self.base_url}{self.location}", headers=self.headers) as response:
                return response.status


async def stream_speech(
    base_url: str,
    call: str,
    participant: str,
    samples: np.ndarray,
    rate: int,
    *,
    video: bool = True,
    hang_up_after_s: float | None = None,
) -> None:
    """Join, play the speech once in real time (or hang up after `hang_up_after_s`), then leave."""
    peer = Peer(base_url, call, participant)
    audio = SpeechTrack(samples, rate)
    await peer.join(audio, PatternTrack() if video else None)
    duration = len(samples) / rate if hang_up_after_s is None else hang_up_after_s
    while audio.sent_s < duration:
        await asyncio.sleep(0.02)
    await peer.leave()
