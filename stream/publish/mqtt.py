"""MQTT bridge: every event to `<prefix>/<call>/<participant>/<type>` at QoS 1; never blocks analysis."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import aiomqtt

from stream import metrics
from stream.config import MqttSettings

log = logging.getLogger(__name__)
_PUBLISH_TIMEOUT_S = 10.0

BridgeState = Literal["starting", "connected", "reconnecting", "stopped"]


class MqttBridge:
    """A hub sink. Events wait in a bounded queue (oldest dropped and counted when the broker is away too
    long) and leave it only once the broker acknowledged them, so a reconnect delivers what was produced
    meanwhile (at least once)."""

    def __init__(self, settings: MqttSettings) -> None:
        self._settings = settings
        url = urlsplit(settings.url)
        self._host, self._port = (
            url.hostname or "127.0.0.1",
            url.port or (8883 if url.scheme == "mqtts" else 1883),
        )
        self._username = unquote(url.username) if url.username else None
        self._password = unquote(url.password) if url.password else None
        self._tls = url.scheme == "mqtts"
        self._queue: deque[dict[str, Any]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.state: BridgeState = "starting"
        self.dropped = 0
        self.published = 0
        self.last_error: str | None = None

    # -- hub side: synchronous, never waits ---------------------------------------------------------------
    def offer(self, message: dict[str, Any]) -> None:
        if len(self._queue) >= self._settings.queue_size:
            self._queue.popleft()
            self.dropped += 1
            metrics.MQTT_DROPPED.inc()
        self._queue.append(message)
        metrics.MQTT_QUEUE.set(len(self._queue))
        self._wake.set()

    def topic(self, message: dict[str, Any]) -> str:
        return f"{self._settings.prefix}/{message['call']}/{message['participant']}/{message['type']}"

    # -- broker side --------------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        backoff = self._settings.reconnect_min_s
        while True:
            try:
                async with aiomqtt.Client(
                    self._host,
                    self._port,
                    username=self._username,
                    password=self._password,
                    identifier=self._settings.client_id,
                    tls_params=aiomqtt.TLSParameters() if self._tls else None,
                    timeout=_PUBLISH_TIMEOUT_S,
                ) as client:
                    self.state, self.last_error = "connected", None
                    log.info("MQTT connected to %s:%d", self._host, self._port)
                    backoff = self._settings.reconnect_min_s
                    await self._deliver(client)
            except aiomqtt.MqttError as exc:
                self.state, self.last_error = "reconnecting", str(exc)
                log.warning(
                    "MQTT broker %s:%d unavailable (%s); retrying in %.1fs",
                    self._host,
                    self._port,
                    exc,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, self._settings.reconnect_max_s)

    async def _deliver(self, client: aiomqtt.Client) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                message = self._queue[0]
                await client.publish(
                    self.topic(message),
                    json.dumps(message),
                    qos=1,
                    retain=message["type"] in self._settings.retain_types,
                    timeout=_PUBLISH_TIMEOUT_S,
                )
                self._queue.popleft()  # only once the broker has acknowledged it
                self.published += 1
                metrics.MQTT_QUEUE.set(len(self._queue))

    async def close(self, flush_timeout_s: float = 2.0) -> None:
        """Give queued events (the leaves of a shutdown) a moment to go out, then stop."""
        deadline = asyncio.get_running_loop().time() + flush_timeout_s
        while self._queue and self.state == "connected" and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.state = "stopped"

    def health(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "broker": f"{self._host}:{self._port}",
            "queued": len(self._queue),
            "dropped": self.dropped,
            "published": self.published,
            "last_error": self.last_error,
        }
