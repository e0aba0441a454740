"""Waiting instead of polling: what wakes a link when there is something to carry.

Two pieces, both without a thread of their own per link:

- ``Changes``: per-key change counters under one condition. A writer bumps a key after its commit
  (the parent's down-queue for a child); a reader notes the counter, reads, and waits only if the
  counter has not moved since, so a change between the read and the wait is never missed.
- ``LinkDriver``: one scheduler thread and a small pool shared by every link of the process (an
  embedded node, or many nodes hosted in one process). Links hand it work to run now or at a
  monotonic time; a link's long-lived call to its parent is a gRPC future, so waiting for the
  parent holds no Python thread at all.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)


class Changes:
    """Change counters per key; ``wait`` returns when the key's counter moved past what was seen."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._counts: dict[str, int] = {}
        self._closed = False

    def seen(self, key: str) -> int:
        with self._cond:
            return self._counts.get(key, 0)

    def bump(self, *keys: str) -> None:
        if not keys:
            return
        with self._cond:
            for key in keys:
                self._counts[key] = self._counts.get(key, 0) + 1
            self._cond.notify_all()

    def wake_all(self) -> None:
        """Let every waiter re-check (a call ended, the server stops)."""
        with self._cond:
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait(self, key: str, seen: int, timeout_s: float, *, gone: Callable[[], bool] = lambda: False) -> bool:
        """Wait until ``key`` changed after ``seen``, ``timeout_s`` passed, or ``gone()``; True if it changed."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._counts.get(key, 0) == seen and not self._closed and not gone():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return self._counts.get(key, 0) != seen


class WorkCancelled(Exception):
    """Raised by driver work that finds what it serves closed (the node stops): ended without a log line."""


class LinkDriver:
    """Runs link work on a shared pool, now (``submit``) or later (``at``), from one scheduler thread.

    One per process is enough (``shared()``): an idle link costs nothing here but its entry in the
    schedule (the safety poll), and the pool's threads exist only while there is work.
    """

    _shared: LinkDriver | None = None
    _shared_lock = threading.Lock()

    def __init__(self, *, workers: int = 4, name: str = "exchange-link") -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._cond = threading.Condition()
        self._schedule: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=f"{name}-schedule", daemon=True)
        self._thread.start()

    @classmethod
    def shared(cls) -> LinkDriver:
        with cls._shared_lock:
            if cls._shared is None or cls._shared._stopping:
                cls._shared = LinkDriver()
            return cls._shared

    @classmethod
    def share(cls, driver: LinkDriver) -> None:
        """Make ``driver`` the process's (a host of many nodes sizes its pool to its links)."""
        with cls._shared_lock:
            cls._shared = driver

    def submit(self, work: Callable[[], None]) -> None:
        """Run ``work`` on the pool as soon as a thread is free (exceptions are logged, never raised)."""
        with contextlib.suppress(RuntimeError):  # the pool is shut down: the process is stopping
            self._pool.submit(self._guarded, work)

    def at(self, when: float, work: Callable[[], None]) -> None:
        """Run ``work`` on the pool at monotonic time ``when``."""
        with self._cond:
            heapq.heappush(self._schedule, (when, next(self._order), work))
            if self._schedule[0][2] is work:
                self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _guarded(work: Callable[[], None]) -> None:
        try:
            work()
        except WorkCancelled:
            pass
        except Exception:
            log.exception("exchange link work failed")

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    if self._schedule and self._schedule[0][0] <= time.monotonic():
                        break
                    self._cond.wait(self._schedule[0][0] - time.monotonic() if self._schedule else None)
                if self._stopping:
                    return
                _, _, work = heapq.heappop(self._schedule)
            self.submit(work)
