"""Patches of aiortc and aioice internals: what each changes, and the warning when the libraries move on."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import aioice.ice
import pytest
from aiortc import RTCPeerConnection

from stream import patches


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
    with caplog.at_level(logging.WARNING, logger="stream.patches"):
        patches.apply(["127.0.0.1"])
    (record,) = caplog.records
    assert "the patches were written for 0.9.x" in record.getMessage()
    assert record.getMessage().startswith("aiortc ")


async def test_audio_receivers_release_frames_after_the_configured_prefetch() -> None:
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    patches.set_audio_prefetch(pc, 1)
    audio, video = pc.getTransceivers()
    assert audio.receiver._RTCRtpReceiver__jitter_buffer._prefetch == 1
    assert video.receiver._RTCRtpReceiver__jitter_buffer._prefetch == 0  # video is left alone
    await pc.close()
