"""Patches of aiortc and aioice internals: what each changes, and the warning when the libraries move on."""

from __future__ import annotations

import asyncio
import fractions
import logging
import threading
from collections.abc import Iterator

import aioice.ice
import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection
from aiortc.codecs.opus import OpusEncoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from stream.serve import patches


@pytest.fixture
def restore_host_addresses() -> Iterator[None]:
    yield
    patches.apply(None)


def test_pinned_host_addresses_are_the_only_ice_candidates(restore_host_addresses: None) -> None:
    patches.apply(["127.0.0.1", "::1"])
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1", "::1"]
    patches.apply(None)
    assert aioice.ice.get_host_addresses.__qualname__ == "get_host_addresses"  # aioice's own again


def test_the_installed_libraries_are_the_ones_the_patches_were_written_for() -> None:
    assert patches.version_mismatches() == []


def test_another_release_is_named_in_a_warning_at_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, restore_host_addresses: None
) -> None:
    monkeypatch.setitem(patches.WRITTEN_FOR, "aiortc", "0.9")
    with caplog.at_level(logging.WARNING, logger="stream.serve.patches"):
        patches.apply(["127.0.0.1"])
    (record,) = caplog.records
    assert "the patches were written for 0.9.x" in record.getMessage()
    assert record.getMessage().startswith("aiortc ")


async def test_audio_receivers_release_frames_after_the_configured_prefetch_and_decode_on_the_loop() -> None:
    sender = RTCPeerConnection()
    sender.addTransceiver("audio", direction="sendonly")
    sender.addTransceiver("video", direction="sendonly")
    await sender.setLocalDescription(await sender.createOffer())
    pc = RTCPeerConnection()
    await pc.setRemoteDescription(sender.localDescription)
    patches.tune_audio_receivers(pc, 1)
    audio, video = pc.getTransceivers()
    assert audio.receiver._RTCRtpReceiver__jitter_buffer._prefetch == 1
    assert video.receiver._RTCRtpReceiver__jitter_buffer._prefetch == 0  # video is left alone
    assert isinstance(audio.receiver._RTCRtpReceiver__decoder_queue, patches.AudioDecodedOnLoop)
    assert not isinstance(video.receiver._RTCRtpReceiver__decoder_queue, patches.AudioDecodedOnLoop)
    await pc.close()
    await sender.close()


def opus_frames(seconds: float) -> list[JitterFrame]:
    """A 440 Hz tone, Opus-encoded in 20 ms frames the way a sender does, as the jitter buffer hands them on."""
    encoder, frames = OpusEncoder(), []
    t = np.arange(960) / 48000
    for i in range(round(seconds / 0.02)):
        pcm = (0.3 * 32767 * np.sin(2 * np.pi * 440 * (t + i * 0.02))).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, i * 960, fractions.Fraction(1, 48000)
        payloads, timestamp = encoder.encode(frame)
        frames += [JitterFrame(data=payload, timestamp=timestamp) for payload in payloads]
    return frames


async def test_audio_decoded_on_the_loop_reaches_the_track_in_order_and_ends_it() -> None:
    track_queue: asyncio.Queue[av.AudioFrame | None] = asyncio.Queue()
    decode_error = threading.Event()
    decoder = patches.AudioDecodedOnLoop(track_queue, decode_error)
    opus = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
    encoded = opus_frames(0.2)
    for frame in encoded:
        decoder.put((opus, frame))
    decoder.put((opus, JitterFrame(data=b"", timestamp=0)))  # an empty packet: opus conceals, or reports
    decoder.put(None)
    decoded = []
    while (frame := track_queue.get_nowait()) is not None:
        decoded.append(frame)
    assert len(decoded) >= len(encoded)  # every frame came out, at once (no thread to wait for)
    pts = [f.pts for f in decoded[: len(encoded)]]
    assert pts == sorted(pts) and len(set(pts)) == len(pts)
    loud = np.abs(np.concatenate([f.to_ndarray().ravel() for f in decoded[2 : len(encoded)]])).max()
    assert loud > 0.1 * 32767  # the tone, not silence
    assert track_queue.empty()  # the end (None) was the last thing handed on


async def test_a_frame_opus_cannot_decode_is_reported_and_the_next_ones_still_come() -> None:
    track_queue: asyncio.Queue[av.AudioFrame | None] = asyncio.Queue()
    decode_error = threading.Event()
    decoder = patches.AudioDecodedOnLoop(track_queue, decode_error)
    opus = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
    decoder.put(
        (opus, JitterFrame(data=b"\xff" * 3, timestamp=0))
    )  # code 3 with a frame count of 63: invalid
    assert decode_error.is_set() and track_queue.empty()
    for frame in opus_frames(0.1):
        decoder.put((opus, frame))
    assert track_queue.qsize() >= 5
