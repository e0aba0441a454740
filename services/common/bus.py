"""The embedded node's event plumbing: an in-process bus, the outbox relay loop and the timer loop.

The in-process bus calls the same handler functions the nameko worker calls (DESIGN §4), so the
embedded node and production differ only in transport. Nothing here imports eventlet or nameko.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from services.common.events import deliver
from services.common.inbox import consume_batch
from services.common.outbox import Relay
from services.common.service import BusEvent, Subscription, Timer

log = logging.getLogger(__name__)

# A consumer takes at most this many events of a relay run in one transaction: on SQLite the
# transaction holds the database's write lock, which the service's api threads wait for.
CONSUMER_BATCH_EVENTS = 50


class DeliveryFailed(Exception):
    """One or more subscribers failed; the others were still called."""

    def __init__(self, event: BusEvent, failures: list[tuple[Subscription, Exception]]) -> None:
        names = ", ".join(f"{sub.consumer}: {exc!r}" for sub, exc in failures)
        super().__init__(f"{event.source}.{event.event_type} {event.event_id} failed for {names}")
        self.event = event
        self.failures = failures


class InProcessBus:
    """Synchronous delivery to every subscription matching the event's source and type."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: list[Subscription] = []

    def subscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subscriptions.append(sub)

    def publish(self, event: BusEvent) -> None:
        """Deliver to all matching subscribers; raise ``DeliveryFailed`` afterwards if any failed.

        Raising makes the relay keep the row and retry it; subscribers that already succeeded skip
        the retry through their inbox (``consume_once``), so the others are not held back by one.
        """
        with self._lock:
            matching = [s for s in self._subscriptions if s.source == event.source and s.event_type == event.event_type]
        failed = _deliver_each(matching, event)
        if failed is not None:
            raise failed

    def publish_batch(self, events: Sequence[BusEvent]) -> tuple[int, Exception | None]:
        """Deliver ``events`` in order, each consumer (service) taking its share in one transaction per
        ``CONSUMER_BATCH_EVENTS`` (``consume_batch``). Returns how many events from the start every
        subscriber took, and the ``DeliveryFailed`` that stopped it there.

        A batch that fails is delivered again one by one, so only the bad event fails; its consumer
        takes nothing after it in this run (order per consumer), and the relay retries from that event.
        Consumers that took later events skip them on the retry through their inbox, as ``publish``'s do.
        """
        with self._lock:
            by_kind: dict[tuple[str, str], list[Subscription]] = {}
            for sub in self._subscriptions:
                by_kind.setdefault((sub.source, sub.event_type), []).append(sub)
        # Per consumer, in event order: (index, event, the consumer's subscriptions matching it).
        plan: dict[str, list[tuple[int, BusEvent, list[Subscription]]]] = {}
        for index, event in enumerate(events):
            per_consumer: dict[str, list[Subscription]] = {}
            for sub in by_kind.get((event.source, event.event_type), ()):
                per_consumer.setdefault(sub.consumer, []).append(sub)
            for consumer, subs in per_consumer.items():
                plan.setdefault(consumer, []).append((index, event, subs))
        delivered, error = len(events), None
        # Round by round, a chunk to each consumer: a slow consumer (routing placing new cases) does
        # not hold the run's later events back from the others (exchange sending them up).
        going = list(plan)
        for start in range(0, len(events), CONSUMER_BATCH_EVENTS):
            for consumer in list(going):
                chunk = plan[consumer][start : start + CONSUMER_BATCH_EVENTS]
                failed = _deliver_in_batch(chunk) if chunk else None
                if failed is not None:
                    going.remove(consumer)  # it takes nothing after its failure in this run
                    if failed[0] < delivered:
                        delivered, error = failed
        return delivered, error


def _deliver_in_batch(items: Sequence[tuple[int, BusEvent, list[Subscription]]]) -> tuple[int, Exception] | None:
    """One consumer's events in one transaction, else one by one; the first failure (index, error)."""

    def deliver_all() -> None:
        for _, event, subs in items:
            for sub in subs:
                deliver(sub, event)

    if len(items) > 1 and consume_batch(deliver_all):
        return None
    for index, event, subs in items:
        failed = _deliver_each(subs, event)
        if failed is not None:
            return index, failed
    return None


def _deliver_each(subs: Sequence[Subscription], event: BusEvent) -> DeliveryFailed | None:
    """``event`` to every one of ``subs``, each failure kept without stopping the others."""
    failures: list[tuple[Subscription, Exception]] = []
    for sub in subs:
        try:
            deliver(sub, event)
        except Exception as exc:
            failures.append((sub, exc))
    if not failures:
        return None
    error = DeliveryFailed(event, failures)
    error.__cause__ = failures[0][1]
    return error


class RelayLoop:
    """A daemon thread running relays every ``interval_s``, or at once after ``notify()``."""

    def __init__(
        self,
        relays: Sequence[Relay],
        interval_s: float,
        *,
        metrics_interval_s: float = 5.0,
        metrics_in_passes: bool = True,
        name: str = "outbox-relay",
    ) -> None:
        self._relays = list(relays)
        self._interval_s = interval_s
        self._metrics_interval_s = metrics_interval_s
        # False: the backlog gauges are refreshed only by ``refresh_metrics`` (an embedded node: on scrape).
        self._metrics_in_passes = metrics_in_passes
        self._wake = threading.Event()
        self._stopping = threading.Event()
        # run_now() and the thread must not run the same relays at once (the lease would make one
        # of them a no-op, and run_now promises the outbox is drained when it returns).
        self._run_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._next_metrics = 0.0
        self.runs = 0  # completed passes over all relays; tests wait on it

    def start(self) -> RelayLoop:
        self._thread.start()
        return self

    def notify(self) -> None:
        """Something was committed: run soon instead of waiting for the next poll."""
        self._wake.set()

    def run_now(self) -> int:
        """Run every relay until its outbox is empty or a publish fails; returns rows published."""
        total = 0
        with self._run_lock:
            for relay in self._relays:
                while True:
                    published = relay.run_once()
                    total += published
                    if published < relay.batch_size or relay.last_error is not None:
                        break
            if self._metrics_in_passes:
                self._refresh_metrics(force=True)
        return total

    def refresh_metrics(self) -> None:
        """The outbox backlog gauges of every relay, now."""
        self._refresh_metrics(force=True)

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop the thread; True if it ended within ``timeout`` seconds."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        stopped = not self._thread.is_alive()
        if stopped:
            for relay in self._relays:
                relay.close()
        return stopped

    def _loop(self) -> None:
        # First pass at once: rows left over from before a restart go out without waiting.
        while not self._stopping.is_set():
            # Clear before running: a notify that arrives during the pass triggers another pass.
            self._wake.clear()
            more = False
            try:
                with self._run_lock:
                    for relay in self._relays:
                        published = relay.run_once()
                        more = more or (published >= relay.batch_size and relay.last_error is None)
                    if self._metrics_in_passes:
                        self._refresh_metrics()
            except Exception:
                log.exception("outbox relay pass failed")
            self.runs += 1
            if not more:
                self._wake.wait(self._interval_s)

    def _refresh_metrics(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_metrics:
            return
        self._next_metrics = now + self._metrics_interval_s
        for relay in self._relays:
            try:
                relay.backlog()
            except Exception:
                log.warning("outbox backlog query failed", exc_info=True, extra={"service": relay.service})


class TimerLoop:
    """One daemon thread running each ``Timer`` every ``interval_s`` (embedded node mode).

    Like nameko's ``@timer``, the first run comes one interval after start, and a slow run delays
    that timer's next run instead of overlapping it. A timer with a ``safety_interval_s`` runs when
    ``wake(name)`` is called (soon after, on this thread) and otherwise every ``safety_interval_s``,
    or sooner when its last run returned a delay.
    """

    def __init__(self, timers: Sequence[Timer], *, name: str = "timers") -> None:
        self._timers = list(timers)
        self._cond = threading.Condition()
        self._stopping = False
        self._woken: set[int] = set()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> TimerLoop:
        self._thread.start()
        return self

    def wake(self, name: str) -> None:
        """Run the timer ``name`` soon (a commit gave it work); unknown names are ignored."""
        with self._cond:
            self._woken.update(i for i, timer in enumerate(self._timers) if timer.name == name)
            self._cond.notify()

    def stop(self, timeout: float = 5.0) -> bool:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @staticmethod
    def _every(timer: Timer) -> float:
        return timer.safety_interval_s if timer.safety_interval_s is not None else timer.interval_s

    def _loop(self) -> None:
        start = time.monotonic()
        # (due time, index): the index breaks ties and names the timer.
        due: dict[int, float] = {index: start + self._every(timer) for index, timer in enumerate(self._timers)}
        while due:
            with self._cond:
                while not self._stopping and not self._woken:
                    left = min(due.values()) - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                if self._stopping:
                    return
                woken, self._woken = self._woken, set()
            now = time.monotonic()
            ready = sorted(woken | {index for index, at in due.items() if at <= now}, key=lambda i: due[i])
            for index in ready:
                timer = self._timers[index]
                again: float | None = None
                try:
                    again = timer.run()
                except Exception:
                    log.exception("timer failed", extra={"timer": timer.name})
                every = self._every(timer)
                # A woken run counts as the timer's run: the next comes a full interval later.
                next_at = time.monotonic() + every if index in woken else max(due[index] + every, time.monotonic())
                if isinstance(again, int | float) and timer.safety_interval_s is not None:
                    next_at = min(next_at, time.monotonic() + max(0.0, float(again)))
                due[index] = next_at
