"""Load generators and percentiles, independent of what is being called.

* ``open_loop``: requests are *scheduled* at a fixed rate and latency is measured from the scheduled
  send time, so a server that falls behind shows it in the percentiles (no coordinated omission:
  a stalled client does not quietly stop offering load).
* ``closed_loop``: C clients call back to back; the rate they reach is the saturation rate.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.harness.progress import Phase

# done(None) for a success, done("UNAVAILABLE") (a short error kind) for a failure.
Done = Callable[[str | None], None]


@dataclass
class Sample:
    """Latencies in seconds of the calls that succeeded, plus counts over the measured window."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0  # the window the rate is computed over
    offered: int = 0  # requests scheduled (open loop) or started (closed loop)
    error_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0

    def ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000.0

    def summary(self) -> dict[str, float | int | dict[str, int]]:
        return {
            "ok": self.count,
            "errors": self.errors,
            "offered": self.offered,
            "seconds": round(self.seconds, 3),
            "rate": round(self.rate, 2),
            "p50_ms": round(self.ms(0.50), 3),
            "p95_ms": round(self.ms(0.95), 3),
            "p99_ms": round(self.ms(0.99), 3),
            "error_kinds": dict(self.error_kinds),
        }


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (the value at rank ceil(q·n)); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def open_loop(
    send: Callable[[Done], None],
    *,
    rate: float,
    duration: float,
    phase: Phase | None = None,
    max_in_flight: int = 2000,
    drain_timeout: float = 60.0,
) -> Sample:
    """Offer ``rate`` requests/s for ``duration`` s; ``send(done)`` starts one asynchronous request
    and must arrange for ``done(error)`` to be called exactly once when it completes (None: success).

    Latency = completion time − *scheduled* time. When ``max_in_flight`` requests are outstanding the
    scheduler waits, and the wait counts against the requests it delays. The rate is the completed
    requests over the window from the first scheduled send to the later of the end of the schedule
    and the last completion.
    """
    total = max(1, int(rate * duration))
    sample = Sample(offered=total)
    lock = threading.Condition()
    state: dict[str, float] = {"in_flight": 0, "finished": 0, "last": 0.0}
    start = time.perf_counter() + 0.01

    def make_done(scheduled: float) -> Done:
        called = [False]

        def done(error: str | None) -> None:
            now = time.perf_counter()
            with lock:
                if called[0]:
                    return
                called[0] = True
                if error is None:
                    sample.latencies.append(now - scheduled)
                else:
                    sample.errors += 1
                    sample.error_kinds[error] = sample.error_kinds.get(error, 0) + 1
                state["in_flight"] -= 1
                state["finished"] += 1
                state["last"] = max(state["last"], now)
                lock.notify_all()
            if phase is not None:
                phase.advance()

        return done

    for i in range(total):
        scheduled = start + i / rate
        pause = scheduled - time.perf_counter()
        if pause > 0:
            time.sleep(pause)  # pacing the offered load
        with lock:
            while state["in_flight"] >= max_in_flight:
                lock.wait(0.1)
            state["in_flight"] += 1
        try:
            send(make_done(scheduled))
        except Exception as error:  # a send that fails synchronously is an error of that request
            make_done(scheduled)(type(error).__name__)
    schedule_end = start + total / rate
    deadline = time.perf_counter() + drain_timeout
    with lock:
        while state["finished"] < total and time.perf_counter() < deadline:
            lock.wait(0.1)
        missing = total - int(state["finished"])
        sample.errors += missing  # never completed within the drain timeout
        if missing:
            sample.error_kinds["no answer"] = missing
        sample.seconds = max(schedule_end, state["last"]) - start
    return sample


def closed_loop(
    call: Callable[[int, int], None],
    *,
    clients: int,
    duration: float,
    phase: Phase | None = None,
    stop: threading.Event | None = None,
) -> Sample:
    """``clients`` threads call ``call(client, n)`` back to back for ``duration`` seconds (or until
    ``stop`` is set). A call that raises counts as an error (by exception type); the client carries on.
    """
    halt = stop if stop is not None else threading.Event()
    stop_at = [0.0]
    per_client: list[list[float]] = [[] for _ in range(clients)]
    errors: list[dict[str, int]] = [{} for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def work(client: int) -> None:
        barrier.wait()
        n = 0
        mine = per_client[client]
        while time.perf_counter() < stop_at[0] and not halt.is_set():
            began = time.perf_counter()
            try:
                call(client, n)
            except Exception as error:
                kind = type(error).__name__
                errors[client][kind] = errors[client].get(kind, 0) + 1
            else:
                mine.append(time.perf_counter() - began)
                if phase is not None:
                    phase.advance()
            n += 1

    threads = [threading.Thread(target=work, args=(c,), daemon=True) for c in range(clients)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    stop_at[0] = began + duration
    barrier.wait()
    for thread in threads:
        thread.join()
    sample = Sample(seconds=time.perf_counter() - began)
    sample.latencies = [x for part in per_client for x in part]
    for kinds in errors:
        for kind, count in kinds.items():
            sample.error_kinds[kind] = sample.error_kinds.get(kind, 0) + count
    sample.errors = sum(sample.error_kinds.values())
    sample.offered = sample.count + sample.errors
    return sample


def sequential(call: Callable[[int], None], *, count: int, warmup: int = 3, phase: Phase | None = None) -> Sample:
    """``count`` timed calls one after the other, after ``warmup`` untimed ones (caches, pools)."""
    for i in range(warmup):
        call(-1 - i)
    sample = Sample(offered=count)
    began = time.perf_counter()
    for i in range(count):
        t0 = time.perf_counter()
        call(i)
        sample.latencies.append(time.perf_counter() - t0)
        if phase is not None:
            phase.advance()
    sample.seconds = time.perf_counter() - began
    return sample
