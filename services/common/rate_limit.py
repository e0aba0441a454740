"""The citizen methods' rate limit: a token bucket per key (the caller's address and the method)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc


class RateLimiter:
    """A token bucket per key (peer address + method) for citizen RPCs."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._capacity = float(max(per_minute, 1))
        self._rate = self._capacity / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self._capacity, now))
            tokens = min(self._capacity, tokens + (now - last) * self._rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return False
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) > 100_000:
                self._buckets.clear()  # bounded memory under a flood of source addresses
            return True


def peer_host(context: grpc.ServicerContext) -> str:
    peer = context.peer() or ""
    # "ipv4:1.2.3.4:5678" / "ipv6:[::1]:5678": the port changes per connection, the host does not.
    return peer.rsplit(":", 1)[0]
