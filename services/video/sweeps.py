"""The periodic clean-up and reminders: expire holds granted here, abandon half-done bookings and moves
made here, finish committed moves (of visits and consultations), retry remote releases, emit due
reminders (visits', and consultations' to every unit taking part). The clock is the
storage's (``VideoStorage.now``), so tests move time instead of waiting."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial

from services.common.errors import Conflict, FailedPrecondition
from services.video.consult import ConsultationReminder
from services.video.consultations import abandon_consultation
from services.video.domain import RemoteHold, RemoteState, VisitReminder, reminders_due
from services.video.holds import expire_holds
from services.video.moves import complete_move
from services.video.ports import RemoteRooms, VideoEvent, VideoStorage
from services.video.remote_holds import release_pending, remote_in
from services.video.visits import abandon_visit

REMINDER_HORIZON = timedelta(hours=25)  # the longest reminder (24 h) and an hour of slack


def send_reminders(video: VideoStorage, horizon: timedelta = REMINDER_HORIZON) -> int:
    """Emit each due reminder of a visit, and of a consultation hosted here (to every unit taking part),
    once: the (booking, kind) key of a sent reminder makes a re-run a no-op."""
    now = video.now()
    sent = 0
    with video.begin() as uow:
        due: list[tuple[str, datetime, str, Callable[[str], VideoEvent]]] = [
            (
                v.visit_id,
                v.starts_at,
                v.case_id,
                partial(VisitReminder, v.case_id, v.visit_id, v.starts_at, v.leader_id),
            )
            for v in uow.visits_starting(now, now + horizon)
        ]
        due += [
            (c.consultation_id, c.starts_at, c.case_id, partial(ConsultationReminder, c))
            for c in uow.consultations_starting(now, now + horizon)
        ]
        done = uow.reminders_sent([booking_id for booking_id, *_ in due])
        # In key order: two sweeps claiming the same reminders take their row locks in the same order.
        for booking_id, starts_at, case_id, reminder in sorted(due, key=lambda d: d[0]):
            for kind in reminders_due(starts_at, now):
                if (booking_id, kind) in done or not uow.claim_reminder(booking_id, kind, now):
                    continue
                uow.emit(reminder(kind), uow.owner(case_id))
                sent += 1
        uow.commit()
    return sent


def _abandon_each(booking_ids: list[str], abandon: Callable[[str], object]) -> int:
    abandoned = 0
    for booking_id in booking_ids:
        try:
            abandon(booking_id)
            abandoned += 1
        except (Conflict, FailedPrecondition):
            pass  # finished, booked or cancelled meanwhile
    return abandoned


def abandon_stale(video: VideoStorage, hold_ttl: timedelta) -> int:
    """Bookings (visits, consultations) and moves that stopped half-way, long after their holds lapsed."""
    reason = "booking did not complete"
    with video.begin() as uow:
        stale_visits = uow.stale_holding(video.now() - hold_ttl * 2)
    abandoned = _abandon_each(stale_visits, lambda visit_id: abandon_visit(video, visit_id, reason))
    with video.begin() as uow:
        abandoned += uow.abandon_stale_moves(video.now() - hold_ttl * 2)
        uow.commit()
    with video.begin() as uow:
        stale_consultations = uow.stale_consultations(video.now() - hold_ttl * 2)
    return abandoned + _abandon_each(stale_consultations, lambda c: abandon_consultation(video, c, reason))


def sweep(video: VideoStorage, remote: RemoteRooms, hold_ttl: timedelta) -> dict[str, int]:
    """The periodic clean-up; see the module docstring."""
    if not video.has_sweep_work():
        return {"expired": 0, "abandoned": 0, "released": 0, "reminders": 0}  # an idle node: one read
    expired = expire_holds(video)
    abandoned = abandon_stale(video, hold_ttl)
    released = 0
    confirming: dict[str, list[RemoteHold]] = {}
    for h in remote_in(video, RemoteState.CONFIRMING):
        confirming.setdefault(h.visit_id, []).append(h)
    for visit_id, holds in confirming.items():
        released += complete_move(video, remote, visit_id, holds)
    released += release_pending(video, remote, remote_in(video, RemoteState.RELEASING))
    reminders = send_reminders(video)
    return {"expired": expired, "abandoned": abandoned, "released": released, "reminders": reminders}
