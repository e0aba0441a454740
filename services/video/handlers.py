"""video's use cases as plain functions over its storage (no gRPC, SQLAlchemy or nameko here).

One module per group of use cases, all importable from here: ``ports`` (the unit-of-work Protocol,
the storage, the other nodes' video services), ``schedules`` (rooms, schedules, the earliest free
slot), ``visits`` (book, confirm, cancel, check in, record the outcome), ``moves`` (reschedule, also
with rooms at other nodes), ``remote_holds`` (holds asked of other nodes), ``holds`` (holds granted
to them), ``consultations`` (远程会商), ``consultation_moves`` (moving one) and ``sweeps`` (the
clean-up and reminders).
"""

from __future__ import annotations

from services.video.consultation_moves import reschedule_consultation
from services.video.consultations import (
    abandon_consultation,
    book_consultation,
    calendar_notice,
    cancel_consultation,
    check_rooms,
    confirm_consultation,
    consultation_slots,
    consultations_of,
    free_periods,
    get_consultation,
    note_consultation_replica,
    record_consultation_minutes,
    reserve_consultation,
)
from services.video.holds import confirm_hold, expire_holds, get_hold, hold_room, release_hold
from services.video.moves import (
    commit_move,
    complete_move,
    drop_move,
    move_local_visit,
    plan_move,
    release_superseded,
    reschedule_visit,
)
from services.video.ports import (
    Booking,
    HoldAnswer,
    RemoteRooms,
    VideoEvent,
    VideoStorage,
    VideoUnitOfWork,
    VisitFilter,
)
from services.video.remote_holds import mark_remote, release_pending
from services.video.schedules import calendar_notice as slots_calendar_notice
from services.video.schedules import (
    list_rooms,
    list_slots,
    next_free_at,
    publish_schedule,
    register_room,
    schedules,
)
from services.video.sweeps import send_reminders, sweep
from services.video.visits import (
    MAX_ATTEMPTS,
    abandon_visit,
    book_visit,
    cancel_visit,
    check_in,
    confirm_visit,
    get_visit,
    list_visits,
    record_outcome,
    reserve_visit,
)

__all__ = [
    "MAX_ATTEMPTS",
    "Booking",
    "HoldAnswer",
    "RemoteRooms",
    "VideoEvent",
    "VideoStorage",
    "VideoUnitOfWork",
    "VisitFilter",
    "abandon_consultation",
    "abandon_visit",
    "book_consultation",
    "book_visit",
    "calendar_notice",
    "cancel_consultation",
    "cancel_visit",
    "check_in",
    "check_rooms",
    "commit_move",
    "complete_move",
    "confirm_consultation",
    "confirm_hold",
    "confirm_visit",
    "consultation_slots",
    "consultations_of",
    "drop_move",
    "expire_holds",
    "free_periods",
    "get_consultation",
    "get_hold",
    "get_visit",
    "hold_room",
    "list_rooms",
    "list_slots",
    "list_visits",
    "mark_remote",
    "move_local_visit",
    "next_free_at",
    "note_consultation_replica",
    "plan_move",
    "publish_schedule",
    "record_consultation_minutes",
    "record_outcome",
    "register_room",
    "release_hold",
    "release_pending",
    "release_superseded",
    "reschedule_consultation",
    "reschedule_visit",
    "reserve_consultation",
    "reserve_visit",
    "schedules",
    "send_reminders",
    "slots_calendar_notice",
    "sweep",
]
