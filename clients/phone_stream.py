"""Play audio files to the server as a phone call does, in the Twilio Media Streams format, at real time:
`python -m clients.phone_stream ws://127.0.0.1:8080/media/CALL caller.wav [--outbound callee.wav]`.

Each file is decoded, resampled to 8 kHz mono, encoded as G.711 μ-law (PyAV's pcm_mulaw encoder) and sent as
`media` messages of 160 bytes (20 ms) after `connected` and `start`, then `stop`. With --outbound the stream has
both tracks (TwiML `track="both_tracks"`): the caller and the callee are two participants of one call.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

RATE = 8000
CHUNK_BYTES = 160  # 20 ms of μ-law at 8 kHz, as Twilio sends it


def mulaw_chunks(path: Path | str) -> list[bytes]:
    """An audio file (any format PyAV reads) as 20 ms chunks of 8 kHz μ-law; the last one padded with silence."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
    parts = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return encode_mulaw(np.concatenate(parts).astype(np.int16))


def encode_mulaw(pcm: np.ndarray) -> list[bytes]:
    """(n,) int16 at 8 kHz → 20 ms chunks of μ-law bytes."""
    pcm = np.concatenate([pcm, np.zeros(-len(pcm) % CHUNK_BYTES, np.int16)])
    encoder = av.CodecContext.create("pcm_mulaw", "w")
    encoder.sample_rate, encoder.layout, encoder.format = RATE, "mono", "s16"  # type: ignore[attr-defined]
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = RATE, 0, Fraction(1, RATE)
    data = b"".join(bytes(packet) for packet in encoder.encode(frame))  # type: ignore[attr-defined]
    return [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]


class TwilioMessages:
    """The messages of one stream, numbered as Twilio numbers them (sequenceNumber over the stream, chunk per
    track, timestamp in ms since the start)."""

    def __init__(self, tracks: list[str], parameters: dict[str, str]) -> None:
        self.stream_sid = "MZ" + uuid.uuid4().hex
        self.call_sid = "CA" + uuid.uuid4().hex
        self.tracks, self.parameters = tracks, parameters
        self._sequence = 0

    def _next(self, event: str, **body: Any) -> str:
        self._sequence += 1
        return json.dumps(
            {"event": event, "sequenceNumber": str(self._sequence), "streamSid": self.stream_sid, **body}
        )

    def connected(self) -> str:
        return json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    def start(self) -> str:
        return self._next(
            "start",
            start={
                "streamSid": self.stream_sid,
                "accountSid": "AC" + "0" * 32,
                "callSid": self.call_sid,
                "tracks": self.tracks,
                "customParameters": self.parameters,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": RATE, "channels": 1},
            },
        )

    def media(self, track: str, index: int, payload: bytes) -> str:
        media = {
            "track": track,
            "chunk": str(index + 1),
            "timestamp": str(index * 20),
            "payload": base64.b64encode(payload).decode(),
        }
        return self._next("media", media=media)

    def stop(self) -> str:
        return self._next("stop", stop={"accountSid": "AC" + "0" * 32, "callSid": self.call_sid})


def interleave(tracks: dict[str, list[bytes]]) -> Iterator[tuple[float, str, int, bytes]]:
    """(send time in s from the start, track, chunk index, payload), in time order; the shorter track ends
    first."""
    longest = max(len(chunks) for chunks in tracks.values())
    for index in range(longest):
        for track, chunks in tracks.items():
            if index < len(chunks):
                yield index * 0.02, track, index, chunks[index]


async def stream_call(
    url: str,
    tracks: dict[str, list[bytes]],
    *,
    parameters: dict[str, str] | None = None,
    token: str | None = None,
    speed: float = 1.0,
    on_media: Callable[[float], None] | None = None,
) -> list[dict[str, Any]]:
    """Stream `tracks` ({"inbound": chunks, "outbound": chunks}) paced at `speed` × real time, then `stop`;
    returns what the server sent (an error, if it refused the stream). `on_media` is told the monotonic time
    the first media went out (each chunk then goes at that time + its timestamp)."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    messages = TwilioMessages(list(tracks), parameters or {})
    async with connect(url, additional_headers=headers) as ws:
        replies: list[dict[str, Any]] = []
        reader = asyncio.create_task(_read(ws, replies))
        try:
            await ws.send(messages.connected())
            await ws.send(messages.start())
            began = time.monotonic()
            if on_media is not None:
                on_media(began)
            for at, track, index, payload in interleave(tracks):
                delay = began + at / speed - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await ws.send(messages.media(track, index, payload))
            await ws.send(messages.stop())
            await ws.close()
        except ConnectionClosed:
            pass  # the server closed the stream: its reason is in the replies
        finally:
            await asyncio.gather(reader, return_exceptions=True)
    return replies


async def _read(ws: ClientConnection, replies: list[dict[str, Any]]) -> None:
    with contextlib.suppress(Exception):
        async for text in ws:
            replies.append(json.loads(text))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url", help="ws://HOST:PORT/media/CALL")
    parser.add_argument("inbound", type=Path, help="the caller's audio (any format PyAV reads)")
    parser.add_argument("--outbound", type=Path, help="the callee's audio: streams both tracks")
    parser.add_argument("--participant", help="the caller's participant id (default: caller)")
    parser.add_argument("--outbound-participant", help="the callee's participant id (default: callee)")
    parser.add_argument("--token", help="a token with the publish right (needed off loopback)")
    parser.add_argument("--speed", type=float, default=1.0, help="× real time (default 1)")
    args = parser.parse_args()
    tracks = {"inbound": mulaw_chunks(args.inbound)}
    if args.outbound:
        tracks["outbound"] = mulaw_chunks(args.outbound)
    parameters = {"participant": args.participant, "outbound_participant": args.outbound_participant}
    replies = asyncio.run(
        stream_call(
            args.url,
            tracks,
            parameters={k: v for k, v in parameters.items() if v},
            token=args.token,
            speed=args.speed,
        )
    )
    for reply in replies:
        print(json.dumps(reply))


if __name__ == "__main__":
    main()
