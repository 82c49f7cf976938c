"""A call's events from a MicroEmo server: GET /events?call=…&types=… (a websocket) → JSON objects, in seq order.

Deliberately small: one connection, no resuming; the processor reconnects and skips what it has seen. A typed,
resuming client can take its place without the processor changing (it needs only an async iterator of dicts)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import urlencode

import aiohttp


def events_url(server_url: str, call: str, types: Iterable[str], token: str | None = None) -> str:
    """ws(s)://host/events?call=…&types=… for an http(s):// server URL."""
    base = server_url.rstrip("/")
    base = "ws" + base[len("http") :] if base.startswith("http") else base
    query = {"call": call, "types": ",".join(types), **({"token": token} if token else {})}
    return f"{base}/events?{urlencode(query)}"


async def read_events(url: str, *, heartbeat_s: float = 10.0) -> AsyncIterator[dict[str, Any]]:
    """Every event sent on the websocket at `url` until it closes; replies to pings are not events."""
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url, heartbeat=heartbeat_s) as ws:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break  # closed or failed: the caller decides whether to reconnect
                event = json.loads(message.data)
                if "seq" in event:
                    yield event
