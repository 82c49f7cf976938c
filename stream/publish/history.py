"""Each call's recent events, bounded by count and age: what a subscriber that resumes (`since=`) missed."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from typing import Any

Message = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Replay:
    """What a subscriber asking for the events after `since` gets before the live ones."""

    messages: list[Message]  # the held events after `since`, oldest first, unfiltered, current schema version
    first_seq: int  # the seq the subscriber gets next: since + 1 unless events are missing
    missing: bool  # events after `since` are no longer held (or `since` is ahead of the call): a gap before first_seq


class CallHistory:
    """The last `max_events` events of each call that are at most `max_age_s` old (clock: `clock`, seconds).

    A call's history goes `max_age_s` after its last event: an ended call costs nothing after that, however
    many calls come and go. Events are the hub's own dicts (shared with the live subscribers, never copied)."""

    def __init__(
        self, max_events: int, max_age_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_events = max_events
        self.max_age_s = max_age_s
        self._clock = clock
        # by call, the least recently active call first: (when recorded, message), oldest first
        self._calls: OrderedDict[str, deque[tuple[float, Message]]] = OrderedDict()

    def record(self, message: Message) -> None:
        """Keep a published event (seqs of a call arrive in order, without gaps)."""
        now = self._clock()
        held = self._calls.get(message["call"])
        if held is None:
            held = self._calls[message["call"]] = deque(maxlen=self.max_events)
        self._calls.move_to_end(message["call"])
        held.append((now, message))
        self._drop_old(held, now)
        self._expire(now)

    def after(self, call: str, since: int, latest: int) -> Replay:
        """The events of `call` after seq `since`; `latest` is the call's last seq (0: none yet)."""
        now = self._clock()
        self._expire(now)
        held = self._calls.get(call, deque())
        self._drop_old(held, now)
        first_held = held[0][1]["seq"] if held else latest + 1
        if since > latest or since + 1 < first_held:
            # What came after `since` is gone, or `since` belongs to a numbering this server never made (it
            # restarted): the subscriber gets all that is held, told where it starts.
            return Replay([message for _, message in held], first_held, True)
        start = since + 1 - first_held
        return Replay([message for _, message in islice(held, start, None)], since + 1, False)

    @property
    def event_count(self) -> int:
        return sum(len(held) for held in self._calls.values())

    @property
    def call_count(self) -> int:
        return len(self._calls)

    def _expire(self, now: float) -> None:
        """Forget the calls whose newest event is older than max_age_s (the least recently active come first)."""
        while self._calls:
            call, held = next(iter(self._calls.items()))
            if held and held[-1][0] >= now - self.max_age_s:
                return
            del self._calls[call]

    def _drop_old(self, held: deque[tuple[float, Message]], now: float) -> None:
        while held and held[0][0] < now - self.max_age_s:
            held.popleft()
