"""The hub: seq numbers per call, filters, and a slow subscriber cut off without stalling anyone."""

from __future__ import annotations

import asyncio

from stream.events import SpeechStart
from stream.publish.hub import Hub


def speech(call: str, t: float = 0.0) -> SpeechStart:
    return SpeechStart(call=call, participant="p", t0=t)


async def test_seq_is_per_call_and_gapless() -> None:
    hub = Hub()
    seqs = [hub.publish(speech(call))["seq"] for call in ["a", "b", "a", "a", "b"]]
    assert seqs == [1, 1, 2, 3, 2]


async def test_subscriber_gets_only_its_call_and_types() -> None:
    hub = Hub()
    sub = hub.subscribe("a", ["speech.start"])
    hub.publish(speech("b"))
    hub.publish(speech("a", 1.0))
    batch = await asyncio.wait_for(sub.next_batch(), 1)
    assert [(m["call"], m["t0"]) for m in batch] == [("a", 1.0)]


async def test_slow_subscriber_is_cut_off_with_an_error_and_others_keep_receiving() -> None:
    hub = Hub(subscriber_queue=5)
    slow, healthy = hub.subscribe("a"), hub.subscribe("a")
    received = []
    for i in range(20):
        hub.publish(speech("a", float(i)))  # never blocks
        received += await asyncio.wait_for(healthy.next_batch(), 1)
    assert len(received) == 20
    assert slow.cut_off
    batch = await slow.next_batch()
    assert len(batch) == 6
    assert batch[-1]["type"] == "error" and batch[-1]["code"] == "slow_consumer"


async def test_a_failing_sink_does_not_stop_publishing() -> None:
    hub = Hub()
    seen = []

    def broken(message: dict[str, object]) -> None:
        raise RuntimeError("broker gone")

    hub.add_sink(broken)
    hub.add_sink(seen.append)
    hub.publish(speech("a"))
    assert len(seen) == 1
