"""Past one machine: a real HAProxy pins each call to one of two real nodes; MQTT is the bus that sees them all."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_CONFIG
from tests.harness import ROOT, EventLog, Mosquitto, ServerProcess, assert_call_events_valid
from tests.media import SPEECH_RATE, Speech
from tests.peer import Peer, SpeechTrack, WhipPeer
from tests.servers import HAProxy

pytestmark = pytest.mark.slow

NODES = ("node-a", "node-b")


def node_of(balancer: HAProxy, call: str) -> str:
    """The node HAProxy sends `call` to: /healthz?call=... goes where every request of that call goes."""
    with urllib.request.urlopen(f"{balancer.url}/healthz?call={call}", timeout=5) as response:
        return str(json.loads(response.read())["node"])


async def join_and_speak(peer: Peer, speech: Speech) -> None:
    audio = SpeechTrack(speech.samples, SPEECH_RATE)
    await peer.join(audio)
    while audio.sent_s < speech.duration:
        await asyncio.sleep(0.05)


async def test_two_calls_through_haproxy_each_pinned_to_its_node_and_all_seen_on_mqtt(
    tmp_path: Path, speech: Speech, event_validator
) -> None:
    broker = Mosquitto(tmp_path)
    nodes: list[ServerProcess] = []
    balancer: HAProxy | None = None
    mqtt = subprocess.Popen(
        [sys.executable, "-u", "-m", "clients.mqtt_subscriber", "--broker", broker.url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for node in NODES:
            workdir = tmp_path / node
            workdir.mkdir()
            config: dict[str, Any] = {
                **TEST_CONFIG,
                "server": {"node_id": node},
                "video": {"enabled": False},
                "mqtt": {"enabled": True, "url": broker.url},
            }
            nodes.append(ServerProcess(config, workdir))
        balancer = HAProxy(tmp_path, [f"127.0.0.1:{node.port}" for node in nodes])
        # Two call ids that the consistent hash puts on different nodes (deterministic for these names)
        placed: dict[str, str] = {}
        for call in (f"call-{i}" for i in range(16)):
            placed.setdefault(node_of(balancer, call), call)
            if len(placed) == 2:
                break
        assert sorted(placed) == sorted(NODES), placed
        assert all(node_of(balancer, call) == node for node, call in placed.items())  # stable

        url = balancer.url
        first, second = placed["node-a"], placed["node-b"]
        ws = url.replace("http://", "ws://")
        async with (
            EventLog(f"{ws}/events?call={first}") as first_events,
            EventLog(f"{ws}/events?call={second}") as second_events,
        ):
            offer_peer = Peer(url, first, "ann")  # POST /offer?call=... through HAProxy
            whip_peer = WhipPeer(url, second, "bob")  # POST /whip/{call} through HAProxy
            await asyncio.gather(join_and_speak(offer_peer, speech), join_and_speak(whip_peer, speech))
            for events in (first_events, second_events):
                await events.wait_for("utterance", count=2, timeout=60)
            await offer_peer.leave()
            assert await whip_peer.delete() == 200  # DELETE /whip/{call}/{session} reached bob's node too
            await whip_peer.leave()
            for events in (first_events, second_events):
                await events.wait_for("participant.leave", timeout=30)
        await asyncio.sleep(1)  # the last MQTT messages reach the subscriber
    finally:
        mqtt.terminate()
        mqtt_output, _ = mqtt.communicate(timeout=10)
        if balancer is not None:
            balancer.stop()
        for node in nodes:
            node.stop()
        broker.stop()

    for node, call, events in (("node-a", first, first_events), ("node-b", second, second_events)):
        assert_call_events_valid(events.messages, event_validator)
        assert {m["call"] for m in events.messages} == {call}
        assert {m["node"] for m in events.messages} == {node}  # every event of the call from its one node
        assert events.of_type("participant.leave")[0]["reason"] in ("hangup", "whip_delete")
    lines = mqtt_output.splitlines()
    for node, call in (("node-a", first), ("node-b", second)):
        assert any(line.startswith(f"{call}@{node}") and "utterance" in line for line in lines), mqtt_output
