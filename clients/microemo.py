"""A typed async client of one call's events (GET /events) that resumes: URL and call in, `Event`s out, each seq
once and in order, across dropped connections.

    async for event in MicroEmo("ws://127.0.0.1:8080", "my-call").events():
        print(event.seq, event.type, event.data)

When the connection drops (a network blip, the server cutting a slow reader, a restart) it reconnects with
exponential back-off and jitter and asks for what it missed (`since=<last seq>`); the server replays it from the
call's recent history, then live events follow with nothing lost or repeated. When what it missed is no longer
held, the server says so and the gap is yielded, never skipped silently: an `Event` of type `error` with code
`history_gone` (`event.gap`), naming the seq the stream goes on from (`event.data["first_seq"]`). The iteration
ends only when the caller stops; a refused subscription (a bad call id, a missing token: HTTP 4xx) raises.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

log = logging.getLogger(__name__)
LAST_SEQ_HEADER = "X-Last-Seq"  # the call's last seq when the subscription began (stream/serve/server.py)


@dataclass(frozen=True, slots=True)
class Event:
    """One message of the events websocket. Call events (API.md) carry `seq`, `call` and `participant`; replies
    to this subscriber alone (an `error` such as history_gone or slow_consumer) carry none of them."""

    type: str
    seq: int | None
    call: str | None
    participant: str | None
    data: dict[str, Any]  # the whole JSON object as the server sent it

    @classmethod
    def from_json(cls, text: str | bytes) -> Event:
        data = json.loads(text)
        return cls(data["type"], data.get("seq"), data.get("call"), data.get("participant"), data)

    @property
    def gap(self) -> bool:
        """Events were missed and are gone: what follows starts at `data["first_seq"]`."""
        return self.type == "error" and self.data.get("code") == "history_gone"


class MicroEmo:
    """The events of `call` on the server at `url` (ws:// or wss://, e.g. ws://127.0.0.1:8080).

    `types`: only these event types (their seqs then skip the others, by design). `since`: start with the held
    events after this seq (0: all the call's held history); None: from now on. `token`: a bearer token with the
    right to subscribe (needed when auth is on). `on_drop`: awaited with the reason each time the connection is
    lost, before the back-off (to tell a user; the client reconnects by itself)."""

    def __init__(
        self,
        url: str,
        call: str,
        token: str | None = None,
        types: Iterable[str] | None = None,
        since: int | None = None,
        backoff_min_s: float = 0.1,
        backoff_max_s: float = 5.0,
        open_timeout_s: float = 10.0,
        on_drop: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.call = call
        self.token = token
        self.types = sorted(types) if types else None
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.open_timeout_s = open_timeout_s
        self.on_drop = on_drop
        self.last_seq = since  # the last seq received, or the one to resume after; None: not connected yet
        self.connections = 0  # websockets opened, the first included
        self.duplicates = 0  # call events received again and skipped (the server's replay should make none)

    def events_url(self) -> str:
        query: dict[str, str] = {"call": self.call}
        if self.types:
            query["types"] = ",".join(self.types)
        if self.last_seq is not None:
            query["since"] = str(self.last_seq)
        return f"{self.url}/events?{urlencode(query)}"

    async def events(self) -> AsyncIterator[Event]:
        """Every event of the call, each seq once and in order, reconnecting as long as the caller iterates."""
        delay = self.backoff_min_s
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        while True:
            try:
                async with connect(
                    self.events_url(), additional_headers=headers, open_timeout=self.open_timeout_s
                ) as ws:
                    self.connections += 1
                    delay = self.backoff_min_s
                    if self.last_seq is None and ws.response is not None:
                        # Subscribed from now on: the live events follow this seq, and a reconnect resumes after it.
                        header = ws.response.headers.get(LAST_SEQ_HEADER)
                        self.last_seq = int(header) if header is not None else None
                    async for text in ws:
                        event = Event.from_json(text)
                        if event.seq is not None and self.last_seq is not None and event.seq <= self.last_seq:
                            self.duplicates += 1
                            continue
                        if event.seq is not None:
                            self.last_seq = event.seq
                        elif event.gap:
                            self.last_seq = int(event.data["first_seq"]) - 1
                        yield event
                why = "the server closed the connection"
            except InvalidStatus as exc:
                status = exc.response.status_code
                if (
                    status < 500 and status != 429
                ):  # refused for good (bad request, auth): retrying cannot help
                    raise
                why = f"HTTP {status}"
            except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake) as exc:
                why = f"{type(exc).__name__}: {exc}"
            if self.on_drop is not None:
                await self.on_drop(why)
            pause = delay / 2 + random.uniform(0, delay / 2)  # jitter: clients cut together come back spread
            log.info(
                "events of %s: %s; reconnecting in %.2f s after seq %s", self.call, why, pause, self.last_seq
            )
            await asyncio.sleep(pause)
            delay = min(delay * 2, self.backoff_max_s)
