"""The MQTT bridge against a real mosquitto: topics, QoS 1, retained events, and a broker restart mid-call."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.conftest import TEST_CONFIG
from tests.harness import EventLog, Mosquitto, ServerProcess, events_url
from tests.media import SPEECH_RATE, Speech
from tests.peer import Peer, SpeechTrack

pytestmark = pytest.mark.slow


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    mosquitto = Mosquitto(tmp_path, persistence=True)
    yield mosquitto
    mosquitto.stop()


def bridged_server(broker: Mosquitto, workdir: Path, retain: list[str]) -> ServerProcess:
    mqtt = {
        "enabled": True,
        "url": broker.url,
        "retain_types": retain,
        "reconnect_min_s": 0.5,
        "reconnect_max_s": 1.0,
    }
    return ServerProcess({**TEST_CONFIG, "mqtt": mqtt}, workdir)


class Listener:
    """An MQTT subscriber to microemo/#, reconnecting by itself if the broker goes away. Its session is persistent
    (as a subscriber that must miss nothing keeps one): what is published while it reconnects waits for it."""

    def __init__(self, broker: Mosquitto) -> None:
        self.broker = broker
        self.messages: list[tuple[str, dict[str, Any], int, bool]] = []
        self.connected = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self.broker.port, identifier="test-listener", clean_session=False
                ) as client:
                    await client.subscribe("microemo/#", qos=1)
                    self.connected.set()
                    async for message in client.messages:
                        payload = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                        self.messages.append((str(message.topic), payload, message.qos, message.retain))
            except aiomqtt.MqttError:
                self.connected.clear()
                await asyncio.sleep(0.05)

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [payload for _, payload, _, _ in self.messages if payload["type"] == type_]


@pytest.fixture
async def listener(broker: Mosquitto) -> AsyncIterator[Listener]:
    listening = Listener(broker)
    task = asyncio.create_task(listening.run())
    await asyncio.wait_for(listening.connected.wait(), 10)
    yield listening
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def wait_until(condition: Any, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)


async def test_every_event_reaches_its_topic_at_qos1_and_the_latest_is_retained(
    broker: Mosquitto, listener: Listener, speech: Speech, tmp_path: Path
) -> None:
    server = bridged_server(broker, tmp_path, retain=["utterance"])
    try:
        async with EventLog(events_url(server, "call-mq")) as events:
            peer = Peer(server.url, "call-mq", "fay")
            track = SpeechTrack(speech.samples, SPEECH_RATE)
            await peer.join(track)
            while track.sent_s < speech.duration:
                await asyncio.sleep(0.05)
            await peer.leave()
            await events.wait_for("participant.leave", timeout=30)
        await wait_until(lambda: len(listener.messages) >= len(events.messages), 10)
    finally:
        server.stop()

    by_seq = {payload["seq"]: (topic, qos) for topic, payload, qos, _ in listener.messages}
    for event in events.messages:
        topic, qos = by_seq[event["seq"]]
        assert topic == f"microemo/call-mq/fay/{event['type']}"
        assert qos == 1
    # a subscriber arriving later gets the latest retained utterance at once
    async with aiomqtt.Client("127.0.0.1", broker.port) as late:
        await late.subscribe("microemo/call-mq/fay/#", qos=1)
        async with asyncio.timeout(5):
            message = await anext(aiter(late.messages))
    assert message.retain
    assert json.loads(bytes(message.payload))["seq"] == events.of_type("utterance")[-1]["seq"]  # type: ignore[arg-type]


async def test_broker_restart_mid_call_loses_no_event(
    broker: Mosquitto, listener: Listener, speech: Speech, tmp_path: Path
) -> None:
    server = bridged_server(broker, tmp_path, retain=[])
    try:
        async with EventLog(events_url(server, "call-restart")) as events:
            peer = Peer(server.url, "call-restart", "gus")
            track = SpeechTrack(speech.samples, SPEECH_RATE)
            await peer.join(track)
            await events.wait_for("utterance", count=1, timeout=30)
            broker.stop()  # the broker dies during the pause between the sentences
            await events.wait_for("speech.start", count=2, timeout=30)
            await asyncio.wait_for(asyncio.to_thread(health_state, server, "reconnecting"), 15)
            broker.start()
            while track.sent_s < speech.duration:
                await asyncio.sleep(0.05)
            await peer.leave()
            await events.wait_for("participant.leave", timeout=30)
        await wait_until(
            lambda: {p["seq"] for _, p, _, _ in listener.messages} >= {m["seq"] for m in events.messages}, 20
        )
    finally:
        server.stop()
    delivered = {p["seq"] for _, p, _, _ in listener.messages}
    assert delivered >= {m["seq"] for m in events.messages}
    # QoS 1 is at least once: a message in flight when the broker went may come twice, and a reconnecting
    # subscriber's queue may come after newer ones; each event's seq says which it is and where it goes
    assert texts_by_seq(listener.of_type("utterance")) == texts_by_seq(
        events.of_type("utterance", interim=True)
    )


def texts_by_seq(utterances: list[dict[str, Any]]) -> list[str]:
    return [u["text"] for u in sorted({u["seq"]: u for u in utterances}.values(), key=lambda u: u["seq"])]


def health_state(server: ServerProcess, wanted: str) -> None:
    import time
    import urllib.request

    while True:
        with urllib.request.urlopen(f"{server.url}/healthz") as response:
            health = json.load(response)
        if health["stages"]["mqtt"]["state"] == wanted:
            assert health["status"] == "degraded"
            return
        time.sleep(0.1)
