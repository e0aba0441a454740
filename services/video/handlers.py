"""Booking and moving across nodes: reserve locally, hold remote rooms, confirm all or release all.

Plain functions over two ports (the store and the remote-rooms client), so the protocol can be
read in one place. Failure rules: any refusal or error releases what was held; a crash half-way
leaves a HOLDING visit (booking) or ASKED/HELD/CONFIRMING/SUPERSEDED remote holds (moving), with a
time-to-live at the owning node, which the sweeps on both nodes clean up (``sweep``): nothing stays
held, and a room is never given up before its replacement is confirmed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from functools import partial
from typing import Protocol

from services.common.clock import CHINA
from services.common.errors import Conflict, DomainError, FailedPrecondition, NotFound, Unavailable
from services.video import consult
from services.video.consult import Consultation, ConsultationRequest, Interval
from services.video.domain import BookRequest, FoundSlot, RemoteHold, RemoteState, Visit

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5  # candidate slots tried when a remote room or a concurrent clerk takes one


@dataclass(frozen=True)
class HoldAnswer:
    granted: bool
    reason: str = ""


class Booking(Protocol):
    """What a hold at another node names: a visit or a consultation (远程会商)."""

    @property
    def booking_id(self) -> str: ...

    @property
    def case_id(self) -> str: ...

    @property
    def starts_at(self) -> datetime: ...

    @property
    def ends_at(self) -> datetime: ...


class RemoteRooms(Protocol):
    """Calls the video service of the node that owns a room (gRPC in production, with deadlines)."""

    def hold(
        self, node: str, *, hold_id: str, room_id: str, visit: Booking, ttl: timedelta, unit_id: str = ""
    ) -> HoldAnswer: ...

    def free_periods(
        self, node: str, *, unit_id: str, room_id: str, not_before: datetime, not_after: datetime
    ) -> tuple[list[Interval], str]:
        """A unit's and a room's free periods at ``node`` and its calendar notice (ListFreePeriods)."""

    def confirm(self, node: str, hold_id: str) -> None:
        """Raises FailedPrecondition when the hold lapsed or was released there, Unavailable when
        the node cannot be reached."""

    def release(self, node: str, hold_id: str, reason: str) -> None: ...


class Store(Protocol):
    """What booking needs of persistence (``services.video.store.VideoStore``)."""

    def book(self, req: BookRequest) -> tuple[Visit, list[RemoteHold]]: ...

    def confirm_visit(self, visit_id: str) -> Visit: ...

    def abandon(
        self, visit_id: str, reason: str, *, expected_version: int = 0, event: bool = False
    ) -> tuple[Visit, list[RemoteHold]]: ...

    def mark_remote(self, hold_id: str, state: str, *, only_from: str | None = None) -> None: ...

    def get_visit(self, visit_id: str) -> Visit: ...

    def reschedule(self, visit_id: str, expected_version: int, req: BookRequest) -> Visit: ...

    def plan_move(
        self, visit_id: str, expected_version: int, req: BookRequest
    ) -> tuple[Visit, FoundSlot, list[RemoteHold]]: ...

    def commit_move(self, visit: Visit, slot: FoundSlot, holds: list[RemoteHold]) -> Visit: ...

    def drop_move(self, hold_ids: list[str]) -> list[RemoteHold]: ...

    def move_confirmed(self, hold_id: str) -> None: ...

    def release_superseded(self, visit_id: str) -> list[RemoteHold]: ...

    def confirming(self) -> list[RemoteHold]: ...

    def abandon_stale_moves(self, older_than: timedelta) -> int: ...

    def expire_holds(self) -> int: ...

    def stale_holding(self, older_than: timedelta) -> list[str]: ...

    def releasing(self) -> list[RemoteHold]: ...

    def send_reminders(self) -> int: ...

    def stale_consultations(self, older_than: timedelta) -> list[str]: ...

    def has_sweep_work(self) -> bool: ...

    def abandon_consultation(
        self, consultation_id: str, reason: str, *, expected_version: int = 0, event: bool = False
    ) -> tuple[Consultation, list[RemoteHold]]: ...


class ConsultationStore(Protocol):
    """What remote consultations need of persistence (``services.video.store.VideoStore``)."""

    node: str

    def mark_remote(self, hold_id: str, state: str, *, only_from: str | None = None) -> None: ...

    def free_periods(self, unit_id: str, room_id: str, not_before: datetime, not_after: datetime) -> list[Interval]: ...

    def calendar_end(self) -> date: ...

    def book_consultation(
        self, req: ConsultationRequest, start: datetime, end: datetime
    ) -> tuple[Consultation, list[RemoteHold]]: ...

    def confirm_consultation(self, consultation_id: str) -> Consultation: ...

    def abandon_consultation(
        self, consultation_id: str, reason: str, *, expected_version: int = 0, event: bool = False
    ) -> tuple[Consultation, list[RemoteHold]]: ...

    def stale_consultations(self, older_than: timedelta) -> list[str]: ...


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
        refused = _hold_all(
            store, remote, visit, holds, ttl, undo=partial(_give_up, store, remote, visit, "hold failed")
        )
        if refused is None:
            _confirm_all(store, remote, holds, give_up=partial(_give_up, store, remote, visit))
            return store.confirm_visit(visit.visit_id)
        _give_up(store, remote, visit, refused)
        if req.starts_at is not None:
            raise Conflict(f"a remote room is not free at {req.starts_at.isoformat()}: {refused}")
        excluded.add(visit.starts_at)
        last_error = Conflict(refused)
    raise last_error or FailedPrecondition("no slot free for every participant", "NO_SLOT")


def _hold_all(
    store: Store | ConsultationStore,
    remote: RemoteRooms,
    visit: Booking,
    holds: list[RemoteHold],
    ttl: timedelta,
    *,
    undo: Callable[[], None],
) -> str | None:
    """Hold every remote room for ``visit``'s period; the reason of the first refusal, or None when
    all are held. A node that does not answer runs ``undo`` (give back what was taken) and raises
    Unavailable: the hold may have been granted before the deadline, so it is released too."""
    for h in holds:
        try:
            answer = remote.hold(h.node, hold_id=h.hold_id, room_id=h.room_id, visit=visit, ttl=ttl, unit_id=h.unit_id)
        except DomainError as error:
            undo()
            raise Unavailable(f"node {h.node} did not answer for room {h.room_id}: {error}") from error
        if not answer.granted:
            return f"room {h.room_id} at node {h.node}: {answer.reason}"
        store.mark_remote(h.hold_id, RemoteState.HELD.value, only_from=RemoteState.ASKED.value)
    return None


def _confirm_all(
    store: Store | ConsultationStore, remote: RemoteRooms, holds: list[RemoteHold], *, give_up: Callable[[str], None]
) -> None:
    """Confirm every held room (and unit); a failure gives the whole booking up and is UNAVAILABLE."""
    for h in holds:
        try:
            remote.confirm(h.node, h.hold_id)
            store.mark_remote(h.hold_id, RemoteState.CONFIRMED.value)
        except DomainError as error:
            give_up(f"confirm failed: {error}")
            raise Unavailable(f"room {h.room_id} at node {h.node} could not be confirmed: {error}") from error


def _give_up(store: Store, remote: RemoteRooms, visit: Visit, reason: str) -> None:
    _, pending = store.abandon(visit.visit_id, reason)
    release_pending(store, remote, pending)


def release_pending(store: Store | ConsultationStore, remote: RemoteRooms, pending: list[RemoteHold]) -> int:
    """Release remote holds; one that cannot be reached now stays RELEASING for the next sweep."""
    released = 0
    for h in pending:
        try:
            remote.release(h.node, h.hold_id, "booking abandoned")
            store.mark_remote(h.hold_id, RemoteState.RELEASED.value)
            released += 1
        except DomainError:
            log.warning("remote hold release failed; retried by the sweep", extra={"hold_id": h.hold_id})
    return released


def cancel_visit(store: Store, remote: RemoteRooms, visit_id: str, expected_version: int, reason: str) -> Visit:
    visit, pending = store.abandon(visit_id, reason, expected_version=expected_version, event=True)
    release_pending(store, remote, pending)
    return visit


def reschedule_visit(
    store: Store, remote: RemoteRooms, visit_id: str, expected_version: int, req: BookRequest, ttl: timedelta
) -> Visit:
    """Move a visit to the earliest slot free for every participant (or exactly ``req.starts_at``).

    Local-only visits move in one transaction. With rooms at other nodes: plan the slot and record
    new holds (ASKED), hold each remote room for the new period, then in one local transaction move
    the reservations and the visit (version + 1; new holds CONFIRMING, old ones SUPERSEDED), then
    confirm the new holds and only then release the old ones. A refusal or an unreachable node
    before the commit releases the new holds and leaves the visit as it was."""
    if not store.get_visit(visit_id).hold_ids:
        return store.reschedule(visit_id, expected_version, req)
    excluded: set[datetime] = set(req.exclude)
    last_error: DomainError | None = None
    for _ in range(MAX_ATTEMPTS):
        visit, slot, holds = store.plan_move(visit_id, expected_version, replace(req, exclude=frozenset(excluded)))
        undo = partial(_drop_move, store, remote, [h.hold_id for h in holds])
        target = replace(visit, starts_at=slot.starts_at, ends_at=slot.ends_at)
        refused = _hold_all(store, remote, target, holds, ttl, undo=undo)
        if refused is not None:
            undo()
            if req.starts_at is not None:
                raise Conflict(f"a remote room is not free at {req.starts_at.isoformat()}: {refused}")
            excluded.add(slot.starts_at)
            last_error = Conflict(refused)
            continue
        try:
            moved = store.commit_move(visit, slot, holds)
        except DomainError:
            undo()  # the visit changed or a local participant was taken meanwhile: nothing moved
            raise
        _complete_move(store, remote, moved.visit_id, holds)
        return moved
    raise last_error or FailedPrecondition("no other slot free for every participant", "BOOKED")


def _drop_move(store: Store, remote: RemoteRooms, hold_ids: list[str]) -> None:
    release_pending(store, remote, store.drop_move(hold_ids))


def _complete_move(store: Store, remote: RemoteRooms, visit_id: str, holds: list[RemoteHold]) -> int:
    """Confirm a committed move's new holds, then release the old ones; returns holds released.

    Unreachable node: the hold stays CONFIRMING and the sweep retries (the owning node keeps it for
    its time-to-live). A hold that lapsed there meanwhile means the visit lost its room at the new
    slot: the visit is cancelled (visit_cancelled) and everything it still holds is released."""
    for h in holds:
        try:
            remote.confirm(h.node, h.hold_id)
        except Unavailable:
            log.warning("move confirmation failed; retried by the sweep", extra={"hold_id": h.hold_id})
            return 0
        except (FailedPrecondition, NotFound) as lapsed:
            reason = f"room {h.room_id} at node {h.node} was lost while moving the visit: {lapsed}"
            try:
                _, pending = store.abandon(visit_id, reason, event=True)
            except (Conflict, FailedPrecondition):
                return 0  # cancelled or checked in meanwhile: the sweep releases what is RELEASING
            return release_pending(store, remote, pending)
        store.move_confirmed(h.hold_id)
    return release_pending(store, remote, store.release_superseded(visit_id))


# --------------------------------------------------------------------------- remote consultations


def calendar_notice(end: date, last: datetime, node: str) -> str:
    if last.astimezone(CHINA).date() <= end:
        return ""
    return (
        f"no slots after {end.isoformat()} at node {node}: the official holiday calendar for {end.year + 1} "
        "is not loaded there (an administrator loads it with `lianxin calendar load`)"
    )


def consultation_slots(
    store: ConsultationStore,
    remote: RemoteRooms,
    req: ConsultationRequest,
    *,
    limit: int,
    exclude: frozenset[datetime] = frozenset(),
) -> tuple[list[Interval], str]:
    """The earliest common slots: each participant's free periods from its own node (this node's from
    the store, the others' by ListFreePeriods), intersected; with the first calendar notice met."""
    lo, hi = req.not_before, req.not_after + req.duration
    free: list[list[Interval]] = []
    notice = calendar_notice(store.calendar_end(), hi, store.node)
    for p in req.participants:
        if p.node == store.node:
            free.append(store.free_periods(p.unit_id, p.room_id, lo, hi))
            continue
        periods, remote_notice = remote.free_periods(
            p.node, unit_id=p.unit_id, room_id=p.room_id, not_before=lo, not_after=hi
        )
        free.append(periods)
        notice = notice or remote_notice
    return consult.common_slots(free, req.duration, req.not_before, req.not_after, limit=limit, exclude=exclude), notice


def book_consultation(
    store: ConsultationStore, remote: RemoteRooms, req: ConsultationRequest, ttl: timedelta
) -> Consultation:
    """The earliest common slot (or ``req.starts_at``), this node's units and rooms reserved, the other
    nodes' held then confirmed; a refusal releases everything and tries the next slot (up to 5)."""
    excluded: set[datetime] = set()
    last_error: DomainError | None = None
    for _ in range(MAX_ATTEMPTS):
        found, notice = consultation_slots(store, remote, req, limit=1, exclude=frozenset(excluded))
        if not found:
            if req.starts_at is not None and not excluded:
                raise Conflict(f"{req.starts_at.isoformat()} is not free for every participant")
            if last_error is not None:
                raise last_error
            raise FailedPrecondition(
                "no slot free for every participant in the window" + (f"; {notice}" if notice else ""), "NO_SLOT"
            )
        start, end = found[0]
        try:
            booked, holds = store.book_consultation(req, start, end)
        except Conflict as clash:
            if req.starts_at is not None:
                raise
            excluded.add(start)
            last_error = clash
            continue
        if not holds:
            return booked
        undo = partial(_give_up_consultation, store, remote, booked.consultation_id, "hold failed")
        refused = _hold_all(store, remote, booked, holds, ttl, undo=undo)
        if refused is None:
            give_up = partial(_give_up_consultation, store, remote, booked.consultation_id)
            _confirm_all(store, remote, holds, give_up=give_up)
            return store.confirm_consultation(booked.consultation_id)
        _give_up_consultation(store, remote, booked.consultation_id, refused)
        if req.starts_at is not None:
            raise Conflict(f"not free at {req.starts_at.isoformat()}: {refused}")
        excluded.add(start)
        last_error = Conflict(refused)
    raise last_error or FailedPrecondition("no slot free for every participant", "NO_SLOT")


def _give_up_consultation(store: ConsultationStore, remote: RemoteRooms, consultation_id: str, reason: str) -> None:
    _, pending = store.abandon_consultation(consultation_id, reason)
    release_pending(store, remote, pending)


def cancel_consultation(
    store: ConsultationStore, remote: RemoteRooms, consultation_id: str, expected_version: int, reason: str
) -> Consultation:
    cancelled, pending = store.abandon_consultation(
        consultation_id, reason, expected_version=expected_version, event=True
    )
    release_pending(store, remote, pending)
    return cancelled


def sweep(store: Store, remote: RemoteRooms, hold_ttl: timedelta) -> dict[str, int]:
    """The periodic clean-up: expire holds granted here, abandon half-done bookings and moves made
    here, finish committed moves, retry remote releases, emit due reminders."""
    if not store.has_sweep_work():
        return {"expired": 0, "abandoned": 0, "released": 0, "reminders": 0}  # an idle node: one read
    expired = store.expire_holds()
    abandoned = 0
    for visit_id in store.stale_holding(hold_ttl * 2):
        try:
            store.abandon(visit_id, "booking did not complete")
            abandoned += 1
        except (Conflict, FailedPrecondition):
            pass  # finished or cancelled meanwhile
    abandoned += store.abandon_stale_moves(hold_ttl * 2)
    for consultation_id in store.stale_consultations(hold_ttl * 2):
        try:
            store.abandon_consultation(consultation_id, "booking did not complete")
            abandoned += 1
        except (Conflict, FailedPrecondition):
            pass  # booked or cancelled meanwhile
    released = 0
    confirming: dict[str, list[RemoteHold]] = {}
    for h in store.confirming():
        confirming.setdefault(h.visit_id, []).append(h)
    for visit_id, holds in confirming.items():
        released += _complete_move(store, remote, visit_id, holds)
    released += release_pending(store, remote, list(store.releasing()))
    reminders = store.send_reminders()
    return {"expired": expired, "abandoned": abandoned, "released": released, "reminders": reminders}
