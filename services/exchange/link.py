"""The parent link: push the up-log to the parent, pull hand-offs down (the national link: ``national``).

An embedded node drives its parent link by events (``ParentLink.start``): a commit that appends to
the up-log wakes a push, and one long-lived ``PullDown`` (the parent holds it until something is
queued for this child, or ``LONG_POLL_S``) brings hand-offs and commands down the moment they are
committed above; a safety pass every ``SAFETY_POLL_S`` catches what another process appended. A
production worker runs ``ParentLink.run`` as a Timer instead (a short poll).

A failing peer never breaks local work: every ``grpc.RpcError`` is caught, the link backs off
exponentially with jitter (capped), and the up-log keeps growing locally; the persisted cursors
make the next successful contact resume exactly where the last one stopped. Calls of the
event-driven link wait for the channel to be ready (``wait_for_ready``), so after a cut the first
call leaves as soon as gRPC has reconnected (``LINK_CHANNEL_OPTIONS``: every 0.1 s at most).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc
from prometheus_client import Gauge

from services.common.grpcclient import instrumented_channel
from services.common.waiting import LinkDriver, WorkCancelled
from services.exchange import domain, mapping
from services.exchange.handlers import Exchange
from services.exchange.ports import Item

log = logging.getLogger(__name__)

LAG_EVENTS = Gauge("lianxin_exchange_link_lag_events", "Items waiting to cross the link", ["peer"])
LAG_SECONDS = Gauge("lianxin_exchange_link_lag_seconds", "Age of the oldest item waiting to cross the link", ["peer"])
LAST_CONTACT = Gauge(
    "lianxin_exchange_last_contact_timestamp_seconds", "Unix time of the last successful contact", ["peer"]
)
QUARANTINED = Gauge("lianxin_exchange_quarantined", "Items from the peer currently in quarantine", ["peer"])

# How long the parent holds a PullDown with nothing queued: the idle link's only traffic (its keepalive;
# a dead connection is found by gRPC's own keepalive pings, SERVER_OPTIONS/CHANNEL_OPTIONS). Below the
# parent's cap (servicer.MAX_WAIT_MS).
LONG_POLL_S = 50.0
# A push or a long poll waits this long beyond its own wait for the channel to be ready and the answer.
CALL_MARGIN_S = 30.0
# An up-log appended by another process (``lianxin exchange import``) is pushed within this time.
SAFETY_POLL_S = 30.0
# Pushes of one link start at least this far apart (a backlog's full batches excepted): the first event
# after a quiet spell leaves at once, and the commits a case sets off within milliseconds after it (its
# work order, the assignment, each appended to the up-log on its own) gather into the next push instead
# of one push each. Every push costs both nodes a round trip, a transaction each and a relay pass at
# the parent: most of a hosted node's CPU per case.
PUSH_GATHER_S = 0.1
# A node's own events (its services' commits, ``wake_local``) leave this long after the first of them
# that found the link idle, not at once: a case registered at a county sets off its placement's three
# events and the progress notice's settlement within about 0.1 s (p50 65 ms, p90 111 ms measured in
# ``bench.case_profile``), and each push costs both nodes a gRPC call, a transaction each, a relay pass
# and a consumer transaction per service at the parent. Gathered, a case crosses in about one push
# per hop instead of two. What a child pushed is not held again (``wake``): the gathering happens once,
# where the events are made.
LOCAL_GATHER_S = 0.1
# A parent that answers a long poll at once with nothing (one that does not hold calls, or has no
# thread to spare) is asked again after this pause, not in a loop.
EMPTY_POLL_PAUSE_S = 1.0
# The event-driven link waits for readiness instead of failing fast, so its backoff only paces
# answers that are errors; kept short so that the first call after a cut is not held back.
EVENT_BACKOFF_CAP_S = 2.0
# gRPC's reconnect backoff for the link's channel: after a cut the link is back within a tenth of a
# second (a refused connect costs the C core microseconds; ten a second while the parent is away).
LINK_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 100),
)


@dataclass
class Backoff:
    """Failure count and the monotonic time before which the pump stays quiet."""

    base_s: float = 0.2
    cap_s: float = 10.0
    failures: int = 0
    not_before: float = 0.0
    rng: random.Random = field(default_factory=random.Random)

    def ready(self) -> bool:
        return time.monotonic() >= self.not_before

    def failed(self) -> float:
        self.failures += 1
        delay = domain.backoff_delay(self.failures, base_s=self.base_s, cap_s=self.cap_s, rng=self.rng)
        self.not_before = time.monotonic() + delay
        return delay

    def succeeded(self) -> None:
        self.failures = 0
        self.not_before = 0.0


class LinkClosed(WorkCancelled):
    """The link was closed (the node stops) before a step could call the parent: the step ends quietly."""


class ParentLink:
    """A child's link to its parent node: PushEvents (up-log) then PullDown/AckDown (hand-offs)."""

    def __init__(
        self,
        store: Exchange,
        *,
        parent_node: str,
        address: str,
        batch_size: int = domain.BATCH_ITEMS,
        deadline_s: float = 5.0,
        max_batches_per_run: int = 20,
        credentials: grpc.ChannelCredentials | None = None,
        audit_head: Callable[[], exchange_pb2.AuditHead | None] | None = None,
        anchor_interval_s: float = 60.0,
    ) -> None:
        self._credentials = credentials  # mTLS client certificate naming this node (None: plaintext)
        # The node's audit chain head, sent up as an anchor when it moved (at most every interval).
        self._audit_head = audit_head
        self._anchor_interval_s = anchor_interval_s
        self._anchored_seq = 0
        self._anchored_at = float("-inf")
        self._store = store
        self.parent_node = parent_node
        self._address = address
        self._batch = batch_size
        self._deadline = deadline_s
        self._max_batches = max_batches_per_run
        self._channel: grpc.Channel | None = None
        # Guards the channel against ``close`` from another thread: grpc crashes the process (a
        # segmentation fault, not an exception) when a stub is built or a call started on a channel
        # that is being closed, so the last caller out closes it (``_calling``).
        self._channel_guard = threading.Lock()
        self._callers = 0
        self._lock = threading.Lock()
        self.backoff = Backoff()
        self.last_error: str = ""
        # Event-driven mode (start): the driver, and whether a push is running or asked for meanwhile.
        self._driver: LinkDriver | None = None
        self._state = threading.Lock()
        self._pushing = False
        self._push_again = False
        self._poll: grpc.Future | None = None
        self._closed = False
        # When the call in flight left (monotonic), None when none is: a call waiting for the channel
        # to be ready does not fail, so one outstanding for too long is how a cut shows.
        self._push_sent: float | None = None
        self._poll_sent: float | None = None
        # (position it follows, items): the next batch, read while the previous one is in flight.
        self._prefetched: tuple[int, list[Item]] = (-1, [])
        # The up cursor as this link last stored it (event-driven mode; None: read it from the store).
        self._acked: int | None = None
        self._push_left = float("-inf")  # monotonic time the last push left (PUSH_GATHER_S)

    @contextmanager
    def _calling(self) -> Iterator[exchange_grpc.ExchangeServiceStub]:
        """A stub on the open channel, which stays open until the block ends (raises LinkClosed once closed).

        A call started as a future may outlive the block: closing the channel then cancels it, which
        grpc handles; what it does not survive is a close racing the start of a call.
        """
        with self._channel_guard:
            if self._closed:
                raise LinkClosed(self.parent_node)
            if self._channel is None:
                self._channel = instrumented_channel(
                    self._address, credentials=self._credentials, options=LINK_CHANNEL_OPTIONS
                )
            self._callers += 1
            stub = exchange_grpc.ExchangeServiceStub(self._channel)
        try:
            yield stub
        finally:
            with self._channel_guard:
                self._callers -= 1
                if self._closed and self._callers == 0:
                    self._close_channel()

    def _close_channel(self) -> None:
        """Close the channel (``_channel_guard`` held, no caller inside ``_calling``)."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    @property
    def pushing(self) -> bool:
        """A push runs or is planned (event-driven mode); False once everything appended went up."""
        return self._pushing

    @property
    def failing(self) -> bool:
        """The last call failed, or a call has waited longer than the parent would take to answer it."""
        now = time.monotonic()
        push, poll = self._push_sent, self._poll_sent
        return (
            self.backoff.failures > 0
            or (push is not None and now - push > self._deadline)
            or (poll is not None and now - poll > LONG_POLL_S + self._deadline)
        )

    def run(self) -> None:
        """One pump pass (the Timer callback); never raises for a link failure."""
        if not self.backoff.ready() or not self._lock.acquire(blocking=False):
            return
        try:
            self.push_up()
            self.pull_down()
            self.backoff.succeeded()
            self.last_error = ""
        except LinkClosed:
            return
        except grpc.RpcError as error:
            delay = self.backoff.failed()
            self.last_error = f"{error.code().name if isinstance(error, grpc.Call) else 'error'}"
            log.warning(
                "link to parent failed; retrying later",
                extra={"peer": self.parent_node, "retry_in_s": round(delay, 2), "error": self.last_error},
            )
        finally:
            self._lock.release()

    def push_up(self) -> int:
        """Push up-log batches (back-pressure: one batch in flight, a bounded number per pass)."""
        with self._calling() as stub:
            return self._push_up(stub)

    def _push_up(self, stub: exchange_grpc.ExchangeServiceStub) -> int:
        sent = 0
        head = self._due_anchor()
        for _ in range(self._max_batches):
            acked = self._store.cursor(self.parent_node, "up").position
            items = self._store.pending_up(acked, self._batch)
            if not items:
                break
            reply = stub.PushEvents(self._push_request(items, head), timeout=self._deadline)
            self._anchored(head)
            head = None
            self._store.save_cursor(self.parent_node, "up", position=reply.acked_position)
            sent += len(items)
            if reply.acked_position < items[-1].position:
                break  # the parent took part of the batch: let it breathe
        if head is not None:
            # Nothing to push, but the chain moved: an anchor-only push.
            stub.PushEvents(
                exchange_pb2.PushEventsRequest(child_node=self._store.node, audit_head=head), timeout=self._deadline
            )
            self._anchored(head)
        if sent == 0:
            self._store.note_contact(self.parent_node, "up")  # nothing moved: no cursor write
        return sent

    def _push_request(
        self, items: Sequence[Item], head: exchange_pb2.AuditHead | None
    ) -> exchange_pb2.PushEventsRequest:
        return exchange_pb2.PushEventsRequest(
            child_node=self._store.node,
            items=mapping.exchange_items(items),
            audit_head=head,
        )

    def _due_anchor(self) -> exchange_pb2.AuditHead | None:
        if self._audit_head is None or time.monotonic() - self._anchored_at < self._anchor_interval_s:
            return None
        head = self._audit_head()
        return head if head is not None and head.sequence > self._anchored_seq else None

    def _anchored(self, head: exchange_pb2.AuditHead | None) -> None:
        if head is not None:
            self._anchored_seq = head.sequence
            self._anchored_at = time.monotonic()

    def pull_down(self) -> int:
        with self._calling() as stub:
            return self._pull_down(stub)

    def _pull_down(self, stub: exchange_grpc.ExchangeServiceStub) -> int:
        applied = 0
        for _ in range(self._max_batches):
            after = self._store.cursor(self.parent_node, "down").position
            reply = stub.PullDown(
                exchange_pb2.PullDownRequest(child_node=self._store.node, after_position=after, max_items=self._batch),
                timeout=self._deadline,
            )
            if not reply.items:
                break
            applied += self._apply_pulled(stub, reply)
        return applied

    def _apply_pulled(self, stub: exchange_grpc.ExchangeServiceStub, reply: exchange_pb2.PullDownResponse) -> int:
        """Apply a PullDown answer (the cursor moves with it, exactly once), then acknowledge it."""
        items = mapping.pulled_items(reply.items)
        position = self._store.apply_down(self.parent_node, items)
        stub.AckDown(
            exchange_pb2.AckDownRequest(child_node=self._store.node, position=position), timeout=self._deadline
        )
        return len(items)

    # ------------------------------------------------------------------ event-driven mode

    def start(self, driver: LinkDriver) -> None:
        """Drive the link by events on ``driver``: push what is pending, open the long poll, plan the safety pass."""
        self._driver = driver
        self.backoff = Backoff(cap_s=EVENT_BACKOFF_CAP_S)
        self.wake()
        driver.submit(self._open_poll)
        driver.at(time.monotonic() + SAFETY_POLL_S, self._safety_pass)

    def wake(self) -> None:
        """Something was appended to the up-log: push it (once more after the running push, if one runs)."""
        self._wake(0.0)

    def wake_local(self) -> None:
        """This node's own events were appended to the up-log: push them ``LOCAL_GATHER_S`` after the
        first that found the link idle (with what its case sets off meanwhile), or after the running push."""
        self._wake(LOCAL_GATHER_S)

    def _wake(self, gather_s: float) -> None:
        driver = self._driver
        if driver is None or self._closed:
            return
        with self._state:
            if self._pushing:
                self._push_again = True
                return
            self._pushing = True
        self._next_push(driver, gather_s=gather_s)

    def _next_push(self, driver: LinkDriver, *, gather_s: float = 0.0) -> None:
        """Run the next push step now, or PUSH_GATHER_S after the last push left if that is later, and
        not before ``gather_s`` from now."""
        now = time.monotonic()
        at = max(self._push_left + PUSH_GATHER_S, now + gather_s)
        if at > now:
            driver.at(at, self._push_step)
        else:
            driver.submit(self._push_step)

    def _safety_pass(self) -> None:
        if self._closed or self._driver is None:
            return
        self.wake()
        self._driver.at(time.monotonic() + SAFETY_POLL_S, self._safety_pass)

    def _failed(self, error: grpc.RpcError, what: str) -> float:
        delay = self.backoff.failed()
        self.last_error = f"{error.code().name if isinstance(error, grpc.Call) else 'error'}"
        log.warning(
            f"link to parent failed ({what}); retrying later",
            extra={"peer": self.parent_node, "retry_in_s": round(delay, 2), "error": self.last_error},
        )
        return delay

    def _succeeded(self) -> None:
        self.backoff.succeeded()
        self.last_error = ""

    def _push_step(self) -> None:
        """Send the next batch of the up-log (one in flight); its answer continues in ``_pushed``."""
        if self._closed:
            self._push_finished()
            return
        with self._state:
            self._push_again = False
        try:
            acked = self._acked if self._acked is not None else self._store.cursor(self.parent_node, "up").position
            after, prefetched = self._prefetched
            items = prefetched if after == acked and prefetched else self._store.pending_up(acked, self._batch)
            self._prefetched = (-1, [])
            head = self._due_anchor()
            if not items and head is None:
                self._store.note_contact(self.parent_node, "up")
                self._push_finished()
                return
            with self._calling() as stub:
                future = stub.PushEvents.future(
                    self._push_request(items, head),
                    timeout=self._deadline + CALL_MARGIN_S,
                    wait_for_ready=True,
                )
        except Exception:
            self._acked = None
            self._push_finished(retry_in=self.backoff.failed())
            raise
        assert self._driver is not None
        driver = self._driver
        self._push_sent = self._push_left = time.monotonic()
        future.add_done_callback(lambda done: driver.submit(lambda: self._pushed(done, items, head)))
        if len(items) == self._batch:
            # A backlog (catch-up): read the next batch while the parent stores this one. Used only
            # if the parent acknowledges this batch whole (the cursor then equals its last position).
            self._prefetched = (items[-1].position, self._store.pending_up(items[-1].position, self._batch))

    def _pushed(self, future: grpc.Future, items: list[Item], head: exchange_pb2.AuditHead | None) -> None:
        self._push_sent = None
        if self._closed:
            self._push_finished()
            return
        try:
            reply = future.result()
        except grpc.RpcError as error:
            if self._closed:
                self._push_finished()
                return
            delay = self._failed(error, "push")
            if isinstance(error, grpc.Call) and error.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                # The push waited its whole deadline for the parent (the link cut, or the parent busy
                # past it): the next one may leave at once, as it too waits for the channel. A pause
                # here was a second gap after the link came back (0.07-0.95 s of a 10,000-event
                # catch-up's ~2 s, issue 21); answers that are errors are still paced.
                delay = 0.0
            self._push_finished(retry_in=delay)
            return
        except Exception:
            self._push_finished(retry_in=self.backoff.failed())
            raise
        self._anchored(head)
        self._succeeded()
        if items:
            try:
                self._acked = self._store.save_cursor(self.parent_node, "up", position=reply.acked_position)
            except Exception:
                self._acked = None
                # The parent holds the batch; it is sent again and skipped there (a resend is a no-op).
                self._push_finished(retry_in=self.backoff.failed())
                raise
            if reply.acked_position < items[-1].position:
                self._push_finished(retry_in=self.backoff.base_s)  # the parent took part of the batch: let it breathe
                return
        if len(items) >= self._batch or self._driver is None:
            self._push_step()  # a backlog: the next batch at once
        elif sum(len(item.body) for item in items) > domain.MAX_BATCH_BYTES // 2:
            # The batch may have ended at its size in bytes: look again, PUSH_GATHER_S after this push left.
            self._next_push(self._driver)
        else:
            # Everything pending went. What was appended since woke the link during the push (``wake``
            # asks for another push then, PUSH_GATHER_S after this one left, so a case's later commits
            # cross in one push): reading the up-log again only to find nothing was one read per push.
            self._push_finished()

    def _push_finished(self, *, retry_in: float | None = None) -> None:
        driver = self._driver
        with self._state:
            again = self._push_again and retry_in is None and not self._closed
            self._push_again = False
            self._pushing = again
        if driver is None:
            return
        if again:
            self._next_push(driver)
        elif retry_in is not None and not self._closed:
            driver.at(time.monotonic() + retry_in, self.wake)

    def _open_poll(self) -> None:
        """One long-lived PullDown: the parent answers when something is queued for us, or after LONG_POLL_S."""
        if self._closed or self._driver is None:
            return
        driver = self._driver
        try:
            after = self._store.cursor(self.parent_node, "down").position
            with self._calling() as stub:
                future = stub.PullDown.future(
                    exchange_pb2.PullDownRequest(
                        child_node=self._store.node,
                        after_position=after,
                        max_items=self._batch,
                        wait_ms=int(LONG_POLL_S * 1000),
                    ),
                    timeout=LONG_POLL_S + CALL_MARGIN_S,
                    wait_for_ready=True,
                )
        except Exception:
            driver.at(time.monotonic() + self.backoff.failed(), self._open_poll)
            raise
        self._poll = future
        opened = self._poll_sent = time.monotonic()
        future.add_done_callback(lambda done: driver.submit(lambda: self._polled(done, opened)))

    def _polled(self, future: grpc.Future, opened: float) -> None:
        self._poll_sent = None
        if self._closed or self._driver is None:
            return
        driver = self._driver
        try:
            reply = future.result()
            self._store.note_contact(self.parent_node, "down")
            if reply.items:
                with self._calling() as stub:
                    self._apply_pulled(stub, reply)
        except grpc.RpcError as error:
            if not self._closed:
                driver.at(time.monotonic() + self._failed(error, "pull"), self._open_poll)
            return
        except Exception:
            driver.at(time.monotonic() + self.backoff.failed(), self._open_poll)
            raise
        self._succeeded()
        if not reply.items and time.monotonic() - opened < LONG_POLL_S / 2:
            # Answered at once with nothing: this parent does not hold the call; ask again later.
            driver.at(time.monotonic() + EMPTY_POLL_PAUSE_S, self._open_poll)
        else:
            self._open_poll()

    def close(self) -> None:
        with self._channel_guard:
            self._closed = True
            poll, self._poll = self._poll, None
            if poll is not None:
                poll.cancel()
            if self._callers == 0:
                self._close_channel()
