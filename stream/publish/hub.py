"""Fan-out of call events: stamps seq/ts, one bounded queue per subscriber, sinks such as the MQTT bridge, and
each call's recent events for subscribers that resume (`since=`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from stream import metrics
from stream.events import SCHEMA_VERSION, CallEvent, encode, for_version, reply
from stream.publish.history import CallHistory, Replay

log = logging.getLogger(__name__)

Message = dict[str, Any]
Sink = Callable[[Message], None]


class Subscriber:
    """One websocket client's view of the hub. `call=None` receives every call (admin)."""

    def __init__(
        self, call: str | None, types: frozenset[str] | None, maxsize: int, version: int = SCHEMA_VERSION
    ) -> None:
        self.call = call
        self.types = types
        self.version = version  # the schema version this subscriber reads (events.for_version)
        self._queue: deque[Message] = deque()
        # what a resuming subscriber missed, sent before its live queue; not bounded by maxsize (the history is)
        self._backlog: deque[Message] = deque()
        self._maxsize = maxsize
        self._ready = asyncio.Event()
        self.cut_off = False
        # the server is going: what is queued is still sent, then the websocket is closed (server.py)
        self.ended = False

    def preload(self, replay: Replay, since: int) -> None:
        """The replay of a resuming subscriber, filtered and versioned as its live events are; a gap is told
        first (`error` history_gone naming the seq it goes on from), never left silent."""
        if replay.missing:
            why = (
                f"seq {since} is ahead of this call's events (the server restarted, or this is another call)"
                if since >= replay.first_seq
                else f"the events after seq {since} are no longer all held"
            )
            self._backlog.append(
                reply(
                    "error",
                    time.time(),
                    code="history_gone",
                    message=f"{why}; what follows starts at seq {replay.first_seq}",
                    first_seq=replay.first_seq,
                )
            )
        for message in replay.messages:
            view = self.view(message)
            if view is not None:
                self._backlog.append(view)
        metrics.EVENTS_REPLAYED.inc(len(replay.messages))
        metrics.RESUMES.labels("history_gone" if replay.missing else "complete").inc()
        if self._backlog:
            self._ready.set()

    def wants(self, message: Message) -> bool:
        if self.call is not None and message.get("call") != self.call:
            return False
        return self.types is None or message["type"] in self.types

    def view(self, message: Message) -> Message | None:
        """The event as this subscriber reads it (its call, its types, its schema version); None: not for it."""
        return for_version(message, self.version) if self.wants(message) else None

    def offer(self, message: Message) -> None:
        """Never blocks: a subscriber whose queue is full is cut off, with an error as its last message."""
        if self.cut_off:
            return
        if len(self._queue) >= self._maxsize:
            self.cut(f"subscriber fell {self._maxsize} messages behind")
        else:
            self._queue.append(message)
            self._ready.set()

    def cut(self, why: str) -> None:
        """No more messages but an error (slow_consumer) saying why; its websocket is then closed (server.py)."""
        if self.cut_off:
            return
        self.cut_off = True
        metrics.SUBSCRIBERS_CUT.inc()
        self._queue.append(
            reply("error", time.time(), code="slow_consumer", message=f"{why} and is disconnected")
        )
        self._ready.set()

    def end(self) -> None:
        self.ended = True
        self._ready.set()

    @property
    def queued(self) -> int:
        return len(self._backlog) + len(self._queue)

    async def next_batch(self) -> list[Message]:
        await self._ready.wait()
        self._ready.clear()
        batch = [*self._backlog, *self._queue]
        self._backlog.clear()
        self._queue.clear()
        return batch


class Hub:
    """Events in from every session, out to subscribers and sinks; the only place seq numbers are made."""

    def __init__(
        self,
        subscriber_queue: int = 256,
        node: str | None = None,
        history_events: int = 2000,
        history_s: float = 300.0,
    ) -> None:
        self._subscriber_queue = subscriber_queue
        self._node = node  # stamped on every event: with several nodes, which one holds the call
        self._seq: dict[str, int] = {}
        # each call's recent events (hub.history_events, hub.history_s), for subscribers that resume
        self.history = CallHistory(history_events, history_s)
        self._subscribers: set[Subscriber] = set()
        self._sinks: list[Sink] = []

    def publish(self, event: CallEvent) -> Message:
        seq = self._seq.get(event.call, 0) + 1
        self._seq[event.call] = seq
        message = encode(event, seq, time.time(), self._node)
        metrics.EVENTS.labels(event.TYPE).inc()
        self.history.record(message)
        for subscriber in list(self._subscribers):
            view = subscriber.view(message)
            if view is not None:
                subscriber.offer(view)
        for sink in self._sinks:
            try:
                sink(message)
            except Exception:  # a broken sink must not stop the others or the analysis
                log.exception("event sink failed", extra={"call": event.call})
        return message

    def subscribe(
        self,
        call: str | None,
        types: Iterable[str] | None = None,
        version: int = SCHEMA_VERSION,
        since: int | None = None,
    ) -> Subscriber:
        """A subscriber of live events; with `since` (a call's seq), first the held events after it. The replay
        is taken and the subscriber registered with no await between them: nothing published falls between."""
        subscriber = Subscriber(call, frozenset(types) if types else None, self._subscriber_queue, version)
        if since is not None:
            if call is None:
                raise ValueError("since= resumes one call's events: it needs a call")
            subscriber.preload(self.history.after(call, since, self.latest_seq(call)), since)
        self._subscribers.add(subscriber)
        return subscriber

    def latest_seq(self, call: str) -> int:
        """The last seq published in `call` (0: none yet)."""
        return self._seq.get(call, 0)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def end(self) -> None:
        """The server is going: each subscriber gets what is queued for it, then its websocket is closed."""
        for subscriber in self._subscribers:
            subscriber.end()

    def add_sink(self, sink: Sink) -> None:
        self._sinks.append(sink)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
