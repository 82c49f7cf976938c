"""Admission and draining: whether this node takes a new participant, and what it tells the load balancer."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from stream.serve.errors import ApiError

log = logging.getLogger(__name__)


class Admission:
    """Past `max_participants`, or once draining, a new participant is refused with a 503 and Retry-After; the
    participants already here are never touched. /healthz then says `full` or `draining` (with a 503) so that
    the balancer sends new calls to other nodes while it keeps the calls pinned here (deploy/haproxy.cfg)."""

    def __init__(self, max_participants: int | None, retry_after_s: int) -> None:
        self.max_participants = max_participants
        self.retry_after_s = retry_after_s
        self.draining = False

    def state(self, participants: int) -> str | None:
        """`draining`, `full`, or None when a new participant would be taken."""
        if self.draining:
            return "draining"
        if self.max_participants is not None and participants >= self.max_participants:
            return "full"
        return None

    def admit(self, participants: int) -> None:
        """Raise the 503 that refuses a new participant, if this node takes none now."""
        state = self.state(participants)
        if state is None:
            return
        message = (
            "this node is draining (shutting down): join again, another node takes the call"
            if state == "draining"
            else f"this node holds its maximum of {self.max_participants} participants: try again later"
        )
        raise ApiError(503, state, message, {"Retry-After": str(self.retry_after_s)})


class Drain:
    """SIGTERM starts a drain: new participants are refused, live calls go on until they end or `timeout_s`
    passes, then `stop` is called (the server's shutdown flushes what is still open). A second SIGTERM, or
    SIGINT, calls `stop` at once."""

    def __init__(
        self, admission: Admission, live: Callable[[], int], timeout_s: float, stop: Callable[[], None]
    ) -> None:
        self._admission = admission
        self._live = live  # participants connected now
        self._timeout_s = timeout_s
        self._stop = stop
        self._waiting: asyncio.Task[None] | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGTERM, self.on_sigterm)
        loop.add_signal_handler(signal.SIGINT, self._stop)

    def on_sigterm(self) -> None:
        if self._admission.draining:
            log.warning("second SIGTERM: stopping now with %d participants", self._live())
            self._stop()
            return
        self._admission.draining = True
        log.info("SIGTERM: draining %d participants (at most %.0f s)", self._live(), self._timeout_s)
        self._waiting = asyncio.get_running_loop().create_task(self._wait_then_stop())

    async def _wait_then_stop(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        while self._live() > 0 and loop.time() < deadline:
            await asyncio.sleep(0.2)
        if self._live() > 0:
            log.warning("drain timeout: %d participants still connected are closed now", self._live())
        self._stop()
