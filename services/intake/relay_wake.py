"""Waking the outbox relay after commits, coalesced (one wake per interval at most)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class CoalescedNotify:
    """Wake the outbox relay at most once per ``interval_s``, never leaving a commit unannounced.

    Waking it after every commit made the relay run a pass (lease, select, update: a transaction
    of its own) per submit, which on PostgreSQL cost about as much CPU as the submit. The first
    commit after a quiet spell wakes it at once; commits within the interval share one trailing
    wake, so an event waits at most ``interval_s`` longer than it would have.

    The trailing wakes come from one thread that lives while commits keep coming and ends after
    ``idle_s`` without any (a thread per trailing wake cost more than the wake).
    """

    def __init__(self, notify: Callable[[], None], interval_s: float = 0.02, idle_s: float = 2.0) -> None:
        self._notify = notify
        self._interval_s = interval_s
        self._idle_s = idle_s
        self._cond = threading.Condition()
        self._last = float("-inf")
        self._pending = False
        self._thread: threading.Thread | None = None

    def __call__(self) -> None:
        with self._cond:
            if self._pending:
                return
            now = time.monotonic()
            if self._last + self._interval_s > now:
                self._pending = True
                if self._thread is None:
                    self._thread = threading.Thread(target=self._trailing, name="intake-relay-wake", daemon=True)
                    self._thread.start()
                else:
                    self._cond.notify()
                return
            self._last = now
        self._notify()

    def _trailing(self) -> None:
        while True:
            with self._cond:
                if not self._pending and not self._cond.wait_for(lambda: self._pending, timeout=self._idle_s):
                    self._thread = None  # under the lock: a later call sees None and starts a new one
                    return
                delay = self._last + self._interval_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            with self._cond:
                self._pending = False
                self._last = time.monotonic()
            self._notify()
