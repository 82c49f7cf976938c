"""A call's events from a MicroEmo server: GET /events?call=…&types=… (a websocket) → JSON objects, in seq order.

Deliberately small: one connection, no resuming (events sent while it was away are missed); the processor
reconnects. A typed, resuming client can take its place without the processor changing: it needs only
`(url, token) → async iterator of event dicts`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import urlencode

import aiohttp


def events_url(server_url: str, call: str, types: Iterable[str]) -> str:
    """ws(s)://host/events?call=…&types=… for an http(s):// server URL."""
    base = server_url.rstrip("/")
    base = "ws" + base[len("http") :] if base.startswith("http") else base
    return f"{base}/events?{urlencode({'call': call, 'types': ','.join(types)})}"


async def read_events(
    url: str, token: str | None = None, *, heartbeat_s: float = 10.0
) -> AsyncIterator[dict[str, Any]]:
    """Every event sent on the websocket at `url` until it closes (the token as a Bearer header, not in the URL
    where logs would keep it); replies to pings are not events."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url, headers=headers, heartbeat=heartbeat_s) as ws:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break  # closed or failed: the caller decides whether to reconnect
                event = json.loads(message.data)
                if "seq" in event:
                    yield event
