"""Admission of SDP offers before any WebRTC work: a rate per client address, caps on offers not yet connected."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from stream import metrics
from stream.config import WebRTCSettings
from stream.serve.errors import ApiError


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


@dataclass(slots=True)
class _Pending:
    client: str
    since: float


@dataclass
class OfferLimits:
    """An offer costs a peer connection until it connects or `connect_timeout_s` passes; a client that never
    connects must not be able to pile them up. Per client address: a token bucket of offers (429) and a cap on
    its offers not yet connected (429); in total: a cap on offers not yet connected (503). Each refusal carries
    `Retry-After`: when a token comes back, or when the oldest pending offer in the way times out."""

    settings: WebRTCSettings
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _pending: dict[str, _Pending] = field(default_factory=dict)  # by session id

    def admit(self, client: str, session_id: str) -> None:
        """Count `session_id` as `client`'s pending offer, or raise ApiError (429 or 503, with Retry-After) when
        `client` may not make an offer now."""
        now = self.clock()
        settings = self.settings
        bucket = self._refill(client, now)
        if bucket.tokens < 1:
            wait = (1 - bucket.tokens) / settings.offers_per_client_per_s
            self._refuse(429, "too_many_offers", f"more than {settings.offer_burst_per_client} offers", wait)
        bucket.tokens -= 1
        own = [p.since for p in self._pending.values() if p.client == client]
        if len(own) >= settings.pending_offers_per_client:
            self._refuse(
                429,
                "too_many_offers",
                f"{len(own)} offers from this address have not connected yet",
                min(own) + settings.connect_timeout_s - now,
            )
        if len(self._pending) >= settings.pending_offers:
            oldest = min(p.since for p in self._pending.values())
            self._refuse(
                503,
                "busy",
                "too many offers have not connected yet",
                oldest + settings.connect_timeout_s - now,
            )
        self._pending[session_id] = _Pending(client, now)

    def settled(self, session_id: str) -> None:
        """The offer's peer connected, or its session closed."""
        self._pending.pop(session_id, None)

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def _refill(self, client: str, now: float) -> _Bucket:
        settings = self.settings
        burst = float(settings.offer_burst_per_client)
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = _Bucket(burst, now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.at) * settings.offers_per_client_per_s)
        bucket.at = now
        if len(self._buckets) > 10_000:  # forget the clients whose buckets are full again
            rate = settings.offers_per_client_per_s
            for key in [k for k, b in self._buckets.items() if b.tokens + (now - b.at) * rate >= burst]:
                del self._buckets[key]
        return bucket

    @staticmethod
    def _refuse(status: int, code: str, why: str, retry_after_s: float) -> None:
        metrics.OFFERS_REFUSED.labels(code).inc()
        retry = max(1, math.ceil(retry_after_s))
        raise ApiError(status, code, f"{why}; retry in {retry} s", {"Retry-After": str(retry)})
