"""Booking across nodes: reserve locally, hold remote rooms, confirm all or release all.

Plain functions over two ports (the store and the remote-rooms client), so the protocol can be
read in one place. Failure rules: any refusal or error releases what was held; a crash half-way
leaves a HOLDING visit and remote holds with a time-to-live, which the sweeps on both nodes clean
up (``sweep``): nothing stays held.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol

from services.common.errors import Conflict, DomainError, FailedPrecondition, Unavailable
from services.video.domain import BookRequest, RemoteHold, Visit

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5  # candidate slots tried when a remote room or a concurrent clerk takes one


@dataclass(frozen=True)
class HoldAnswer:
    granted: bool
    reason: str = ""


class RemoteRooms(Protocol):
    """Calls the video service of the node that owns a room (gRPC in production, with deadlines)."""

    def hold(self, node: str, *, hold_id: str, room_id: str, visit: Visit, ttl: timedelta) -> HoldAnswer: ...

    def confirm(self, node: str, hold_id: str) -> None: ...

    def release(self, node: str, hold_id: str, reason: str) -> None: ...


class Store(Protocol):
    """What booking needs of persistence (``services.video.store.VideoStore``)."""

    def book(self, req: BookRequest) -> tuple[Visit, list[RemoteHold]]: ...

    def confirm_visit(self, visit_id: str) -> Visit: ...

    def abandon(
        self, visit_id: str, reason: str, *, expected_version: int = 0, event: bool = False
    ) -> tuple[Visit, list[RemoteHold]]: ...

    def mark_remote(self, hold_id: str, state: str) -> None: ...

    def expire_holds(self) -> int: ...

    def stale_holding(self, older_than: timedelta) -> list[str]: ...

    def releasing(self) -> list[RemoteHold]: ...

    def send_reminders(self) -> int: ...


def book_visit(store: Store, remote: RemoteRooms, req: BookRequest, ttl: timedelta) -> Visit:
    """Earliest slot for everyone, with remote rooms held then confirmed; see the module docstring."""
    excluded: set[datetime] = set(req.exclude)
    last_error: DomainError | None = None
    for _ in range(MAX_ATTEMPTS):
        attempt = replace(req, exclude=frozenset(excluded))
        try:
            visit, holds = store.book(attempt)
        except Conflict as clash:
            # A concurrent clerk took the slot between our read and our write.
            if req.starts_at is not None:
                raise
            last_error = clash
            continue
        if not holds:
            return visit
        refused = _hold_all(store, remote, visit, holds, ttl)
        if refused is None:
            for h in holds:
                try:
                    remote.confirm(h.node, h.hold_id)
                    store.mark_remote(h.hold_id, "CONFIRMED")
                except DomainError as error:
                    _give_up(store, remote, visit, f"confirm failed: {error}")
                    raise Unavailable(f"room {h.room_id} at node {h.node} could not be confirmed: {error}") from error
            return store.confirm_visit(visit.visit_id)
        _give_up(store, remote, visit, refused)
        if req.starts_at is not None:
            raise Conflict(f"a remote room is not free at {req.starts_at.isoformat()}: {refused}")
        excluded.add(visit.starts_at)
        last_error = Conflict(refused)
    raise last_error or FailedPrecondition("no slot free for every participant", "NO_SLOT")


def _hold_all(store: Store, remote: RemoteRooms, visit: Visit, holds: list[RemoteHold], ttl: timedelta) -> str | None:
    """Hold every remote room; the reason of the first refusal, or None when all are held."""
    for h in holds:
        try:
            answer = remote.hold(h.node, hold_id=h.hold_id, room_id=h.room_id, visit=visit, ttl=ttl)
        except DomainError as error:
            _give_up(store, remote, visit, f"hold failed: {error}")
            raise Unavailable(f"node {h.node} did not answer for room {h.room_id}: {error}") from error
        if not answer.granted:
            return f"room {h.room_id} at node {h.node}: {answer.reason}"
        store.mark_remote(h.hold_id, "HELD")
    return None


def _give_up(store: Store, remote: RemoteRooms, visit: Visit, reason: str) -> None:
    _, pending = store.abandon(visit.visit_id, reason)
    release_pending(store, remote, pending)


def release_pending(store: Store, remote: RemoteRooms, pending: list[RemoteHold]) -> int:
    """Release remote holds; one that cannot be reached now stays RELEASING for the next sweep."""
    released = 0
    for h in pending:
        try:
            remote.release(h.node, h.hold_id, "booking abandoned")
            store.mark_remote(h.hold_id, "RELEASED")
            released += 1
        except DomainError:
            log.warning("remote hold release failed; retried by the sweep", extra={"hold_id": h.hold_id})
    return released


def cancel_visit(store: Store, remote: RemoteRooms, visit_id: str, expected_version: int, reason: str) -> Visit:
    visit, pending = store.abandon(visit_id, reason, expected_version=expected_version, event=True)
    release_pending(store, remote, pending)
    return visit


def sweep(store: Store, remote: RemoteRooms, hold_ttl: timedelta) -> dict[str, int]:
    """The periodic clean-up: expire holds granted here, abandon half-done bookings made here,
    retry remote releases, emit due reminders."""
    expired = store.expire_holds()
    abandoned = 0
    for visit_id in store.stale_holding(hold_ttl * 2):
        try:
            store.abandon(visit_id, "booking did not complete")
            abandoned += 1
        except (Conflict, FailedPrecondition):
            pass  # finished or cancelled meanwhile
    released = release_pending(store, remote, list(store.releasing()))
    reminders = store.send_reminders()
    return {"expired": expired, "abandoned": abandoned, "released": released, "reminders": reminders}
