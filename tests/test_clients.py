"""The subscriber examples print a live call readably, over the websocket and over MQTT."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_CONFIG
from tests.harness import ROOT, EventLog, Mosquitto, ServerProcess, events_url
from tests.media import SPEECH_RATE, Speech
from tests.peer import stream_speech

pytestmark = pytest.mark.slow


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-u", "-m", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop(process: subprocess.Popen[str]) -> str:
    process.terminate()
    output, _ = process.communicate(timeout=10)
    return output


async def test_subscribers_print_transcripts_and_emotions(tmp_path: Path, speech: Speech) -> None:
    broker = Mosquitto(tmp_path)
    server = ServerProcess({**TEST_CONFIG, "mqtt": {"enabled": True, "url": broker.url}}, tmp_path)
    ws_client = start("clients.ws_subscriber", "call-print", "--url", f"ws://127.0.0.1:{server.port}")
    mqtt_client = start("clients.mqtt_subscriber", "--broker", broker.url, "--call", "call-print")
    try:
        await asyncio.sleep(2)  # both subscribed before the call starts
        async with EventLog(events_url(server, "call-print")) as events:
            await stream_speech(server.url, "call-print", "kim", speech.samples, SPEECH_RATE)
            await events.wait_for("participant.leave", timeout=30)
        await asyncio.sleep(1)
    finally:
        ws_output, mqtt_output = stop(ws_client), stop(mqtt_client)
        server.stop()
        broker.stop()
    for output in (ws_output, mqtt_output):
        lines = output.splitlines()
        assert any("utterance" in line and "wonderful" in line.lower() for line in lines), output
        assert any("emotion" in line and "v=" in line for line in lines), output
        assert any("participant.leave" in line and "left (hangup)" in line for line in lines), output
