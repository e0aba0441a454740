"""video's use cases over an in-memory unit of work: what a clerk, a leader or a citizen notices,
without a database or another node.

The same behaviour runs through real nodes on SQLite and PostgreSQL in tests/integration/test_video_*.py
and test_consultation.py; these are the fast layer of the pyramid.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time, timedelta

import pytest

from services.common.errors import Conflict, FailedPrecondition, InvalidArgument, Unavailable
from services.video import handlers
from services.video.consult import (
    ConsultationBooked,
    ConsultationCancelled,
    ConsultationHeld,
    ConsultationReminder,
    ConsultationRequest,
    ConsultationState,
    Participant,
)
from services.video.domain import (
    DEFAULT_HOLD_TTL,
    BookRequest,
    CaseOwner,
    Hold,
    HoldState,
    RemoteState,
    Representative,
    Room,
    Schedule,
    VisitBooked,
    VisitCancelled,
    VisitOutcomeRecorded,
    VisitReminder,
    VisitState,
    WeeklyPattern,
)
from tests.support.video_uow import FakeRemoteRooms, FakeVideoStore

CASE = "511102-20261123-000001"
# The leader receives on Wednesdays 09:00-12:00 (Sichuan): slots of 30 minutes, 10 minutes apart.
WED_0900 = datetime(2026, 11, 25, 1, 0, tzinfo=UTC)
WED_0940 = WED_0900 + timedelta(minutes=40)
TTL = DEFAULT_HOLD_TTL


def video(max_per_session: int = 4) -> FakeVideoStore:
    store = FakeVideoStore()
    handlers.register_room(store, Room("511102-R1", "511102", "接访室"))
    handlers.register_room(store, Room("511100-R1", "511100", "市接访室"))
    handlers.publish_schedule(
        store,
        Schedule(
            schedule_id="",
            leader_id="leader-1",
            node="511102",
            weekly=(WeeklyPattern(3, time(9, 0), time(12, 0)),),
            one_offs=(),
            slot_minutes=30,
            buffer_minutes=10,
            max_per_session=max_per_session,
            room_ids=("511102-R1",),
            leader_name="王某某（区长）",
        ),
        0,
    )
    return store


def wanted(store: FakeVideoStore, case_id: str = CASE, **overrides: object) -> BookRequest:
    fields: dict[str, object] = {
        "case_id": case_id,
        "leader_id": "leader-1",
        "room_ids": (),
        "unit_ids": (),
        "not_before": store.now(),
        "not_after": store.now() + timedelta(days=30),
        "starts_at": None,
        **overrides,
    }
    return BookRequest(**fields)  # type: ignore[arg-type]


def test_a_booking_takes_the_earliest_slot_and_the_next_one_the_slot_after() -> None:
    store = video()
    first = handlers.book_visit(store, FakeRemoteRooms(), wanted(store), TTL)
    second = handlers.book_visit(store, FakeRemoteRooms(), wanted(store, "511102-20261123-000002"), TTL)
    assert (first.starts_at, second.starts_at) == (WED_0900, WED_0940)
    assert first.state is VisitState.BOOKED and first.room_ids == ["511102-R1"]
    assert store.events == [
        VisitBooked(CASE, first.visit_id, WED_0900, "leader-1"),
        VisitBooked("511102-20261123-000002", second.visit_id, WED_0940, "leader-1"),
    ]


def test_a_full_session_offers_no_more_slots_that_day() -> None:
    store = video(max_per_session=1)
    handlers.book_visit(store, FakeRemoteRooms(), wanted(store), TTL)
    later = handlers.book_visit(store, FakeRemoteRooms(), wanted(store, "511102-20261123-000002"), TTL)
    assert later.starts_at == WED_0900 + timedelta(days=7)  # next Wednesday


def test_a_citizen_books_one_visit_per_case_and_cancelling_frees_the_slot() -> None:
    store = video()
    mine = wanted(store, starts_at=WED_0900, not_before=WED_0900, not_after=WED_0900, one_per_case=True)
    visit = handlers.book_visit(store, FakeRemoteRooms(), mine, TTL)
    with pytest.raises(FailedPrecondition) as again:
        handlers.book_visit(store, FakeRemoteRooms(), mine, TTL)
    assert "cancel it first" in str(again.value)
    cancelled = handlers.cancel_visit(store, FakeRemoteRooms(), visit.visit_id, visit.version, "有事")
    assert cancelled.state is VisitState.CANCELLED and cancelled.version == 2
    assert store.events[-1] == VisitCancelled(CASE, visit.visit_id, WED_0900, "有事")
    assert handlers.book_visit(store, FakeRemoteRooms(), mine, TTL).starts_at == WED_0900


def test_an_exact_start_that_is_taken_is_a_conflict_not_another_slot() -> None:
    store = video()
    handlers.book_visit(store, FakeRemoteRooms(), wanted(store), TTL)
    with pytest.raises(Conflict):
        handlers.book_visit(store, FakeRemoteRooms(), wanted(store, "511102-20261123-000002", starts_at=WED_0900), TTL)


def test_a_stale_version_or_a_finished_visit_cannot_be_cancelled() -> None:
    store = video()
    visit = handlers.book_visit(store, FakeRemoteRooms(), wanted(store), TTL)
    with pytest.raises(Conflict):
        handlers.cancel_visit(store, FakeRemoteRooms(), visit.visit_id, visit.version + 1, "")
    done = handlers.record_outcome(store, visit.visit_id, visit.version, "已答复", "责成区住建局处理", "")
    assert done.state is VisitState.COMPLETED
    with pytest.raises(FailedPrecondition) as refused:
        handlers.cancel_visit(store, FakeRemoteRooms(), visit.visit_id, 0, "")
    assert "COMPLETED" in str(refused.value)


def test_an_outcome_for_a_case_handled_elsewhere_goes_to_its_owner_too() -> None:
    store = video()
    visit = handlers.book_visit(store, FakeRemoteRooms(), wanted(store), TTL)
    store.state.owners[CASE] = CaseOwner("511100", 2)  # handed up to the city
    reps = [Representative("张三", "11010519491231002X")]
    checked = handlers.check_in(store, visit.visit_id, visit.version, reps)
    assert checked.state is VisitState.CHECKED_IN and checked.checked_in_at == store.now()
    handlers.record_outcome(store, visit.visit_id, checked.version, "纪要", "", "rec-1")
    event, owner, to_owner = store.state.events[-1]
    assert event == VisitOutcomeRecorded(CASE, visit.visit_id, "纪要", "", "rec-1")
    assert owner == CaseOwner("511100", 2) and to_owner


def test_a_remote_room_refused_moves_the_booking_to_the_next_slot_and_releases_the_hold() -> None:
    store = video()
    remote = FakeRemoteRooms()
    first = handlers.book_visit(store, remote, wanted(store, room_ids=("511100-R1",)), TTL)
    assert first.state is VisitState.BOOKED and len(remote.confirmed) == 1
    remote.refuse.add("511100-R1")
    with pytest.raises(Conflict):
        handlers.book_visit(store, remote, wanted(store, "511102-20261123-000002", room_ids=("511100-R1",)), TTL)
    # Every attempt gave its local reservations back: the leader's next slot is still free.
    assert handlers.book_visit(store, FakeRemoteRooms(), wanted(store, "511102-20261123-000003"), TTL).starts_at == (
        WED_0940
    )


def test_a_node_that_does_not_answer_leaves_nothing_held() -> None:
    store = video()
    remote = FakeRemoteRooms(unreachable={"511100"})
    with pytest.raises(Unavailable):
        handlers.book_visit(store, remote, wanted(store, room_ids=("511100-R1",)), TTL)
    assert [v.state for v in store.state.visits.values()] == [VisitState.CANCELLED]
    assert store.state.reservations == []
    # The release could not reach the node either: the sweep retries it.
    assert [h.state for h, _ in store.state.remote.values()] == [RemoteState.RELEASING]


def test_a_visit_moves_to_the_next_free_slot_and_is_reminded_again() -> None:
    store = video()
    visit = handlers.book_visit(store, FakeRemoteRooms(), wanted(store), TTL)
    store.clock = WED_0900 - timedelta(hours=20)
    assert handlers.send_reminders(store) == 1
    store.clock = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
    moved = handlers.reschedule_visit(store, FakeRemoteRooms(), visit.visit_id, visit.version, wanted(store), TTL)
    assert moved.starts_at == WED_0940 and moved.version == visit.version + 1
    assert store.events[-1] == VisitBooked(CASE, visit.visit_id, WED_0940, "leader-1")
    # The old slot is free again, and the moved visit is reminded for its new start.
    assert handlers.list_slots(store, wanted(store), 1)[0].starts_at == WED_0900
    store.clock = WED_0940 - timedelta(hours=20)
    assert handlers.send_reminders(store) == 1


def test_reminders_go_out_once_a_day_and_an_hour_before() -> None:
    store = video()
    visit = handlers.book_visit(store, FakeRemoteRooms(), wanted(store), TTL)
    store.clock = WED_0900 - timedelta(hours=23)
    assert handlers.send_reminders(store) == 1
    assert handlers.send_reminders(store) == 0
    store.clock = WED_0900 - timedelta(minutes=30)
    assert handlers.send_reminders(store) == 1
    reminders = [e for e in store.events if isinstance(e, VisitReminder)]
    assert [(e.kind, e.visit_id) for e in reminders] == [("24h", visit.visit_id), ("1h", visit.visit_id)]


def test_a_hold_for_another_node_is_refused_on_a_busy_room_and_lapses_unconfirmed() -> None:
    store = video()
    handlers.book_visit(store, FakeRemoteRooms(), wanted(store), TTL)

    def asked(hold_id: str, start: datetime) -> Hold:
        ends = start + timedelta(minutes=30)
        return Hold(hold_id, "511102-R1", "511100", "vis-x", CASE, start, ends, store.now() + TTL, HoldState.HELD)

    assert handlers.hold_room(store, asked("h1", WED_0900)).state is HoldState.REFUSED
    assert handlers.hold_room(store, asked("h2", WED_0940)).state is HoldState.HELD
    store.clock += TTL + timedelta(seconds=1)
    with pytest.raises(FailedPrecondition) as lapsed:
        handlers.confirm_hold(store, "h2", "511100")
    assert "EXPIRED" in str(lapsed.value)
    assert handlers.expire_holds(store) == 1
    assert handlers.hold_room(store, asked("h3", WED_0940)).state is HoldState.HELD


def test_a_schedule_names_registered_rooms_and_replaces_only_the_version_it_read() -> None:
    store = video()
    current = handlers.schedules(store)[0]
    with pytest.raises(InvalidArgument) as unknown:
        handlers.publish_schedule(store, Schedule(**{**current.__dict__, "room_ids": ("R9",)}), current.version)
    assert unknown.value.field == "schedule.room_ids[0]"
    changed = handlers.publish_schedule(store, Schedule(**{**current.__dict__, "max_per_session": 2}), 1)
    assert changed.version == 2 and changed.schedule_id == current.schedule_id
    with pytest.raises(Conflict):
        handlers.publish_schedule(store, Schedule(**{**current.__dict__, "max_per_session": 3}), 1)


def consultation(store: FakeVideoStore) -> ConsultationRequest:
    return ConsultationRequest(
        case_id=CASE,
        actor="clerk-1",
        topic="跨区污水管网责任",
        participants=(Participant("511102", "unit-zj", "511102-R1"), Participant("511100", "unit-city", "511100-R1")),
        duration=timedelta(minutes=60),
        not_before=store.now(),
        not_after=store.now() + timedelta(days=30),
    )


def test_a_consultation_is_booked_across_nodes_held_with_minutes_and_not_held_twice() -> None:
    store = video()
    remote = FakeRemoteRooms()
    booked = handlers.book_consultation(store, remote, consultation(store), TTL)
    assert booked.state is ConsultationState.BOOKED and len(remote.confirmed) == 1
    # Consultation hours are open and both rooms free: the hour from now (Monday 10:00 in Sichuan).
    assert (booked.starts_at, booked.ends_at) == (store.now(), store.now() + timedelta(hours=1))
    held = handlers.record_consultation_minutes(store, booked.consultation_id, booked.version, "由市住建局牵头")
    assert held.state is ConsultationState.HELD and held.minutes == "由市住建局牵头"
    with pytest.raises(FailedPrecondition):
        handlers.record_consultation_minutes(store, booked.consultation_id, 0, "again")
    assert [type(e) for e in store.events] == [ConsultationBooked, ConsultationHeld]


def test_a_cancelled_consultation_gives_the_other_nodes_their_rooms_back() -> None:
    store = video()
    remote = FakeRemoteRooms()
    booked = handlers.book_consultation(store, remote, consultation(store), TTL)
    cancelled = handlers.cancel_consultation(store, remote, booked.consultation_id, booked.version, "改期")
    assert cancelled.state is ConsultationState.CANCELLED and cancelled.cancel_reason == "改期"
    assert remote.released == remote.confirmed and not remote.held
    assert isinstance(store.events[-1], ConsultationCancelled)
    assert store.state.reservations == []


def tomorrow(store: FakeVideoStore) -> ConsultationRequest:
    """The consultation asked for from Tuesday 10:00 (Sichuan) on: Tuesday 10:00-11:00."""
    return replace(consultation(store), not_before=store.now() + timedelta(days=1))


def test_a_consultation_moves_to_the_next_common_slot_and_the_old_one_is_freed_after_the_new_is_confirmed() -> None:
    store = video()
    remote = FakeRemoteRooms()
    booked = handlers.book_consultation(store, remote, consultation(store), TTL)
    (old_hold,) = booked.hold_ids
    window = (store.now(), store.now() + timedelta(days=30), None)
    moved = handlers.reschedule_consultation(store, remote, booked.consultation_id, booked.version, window, TTL)
    # Its own reservations here count free: the next grid start, half an hour later.
    assert moved.starts_at == booked.starts_at + timedelta(minutes=30) and moved.version == booked.version + 1
    (new_hold,) = moved.hold_ids
    assert new_hold in remote.confirmed and old_hold in remote.released
    assert store.events[-1] == ConsultationBooked(moved, moved_from=booked.starts_at)
    assert sorted((a, b) for _, a, b, _ in store.state.reservations) == [(moved.starts_at, moved.ends_at)] * 2
    with pytest.raises(Conflict):  # the version read before the move
        handlers.reschedule_consultation(store, remote, booked.consultation_id, booked.version, window, TTL)


def test_a_consultation_whose_new_slot_is_refused_elsewhere_stays_where_it_was() -> None:
    store = video()
    remote = FakeRemoteRooms()
    booked = handlers.book_consultation(store, remote, consultation(store), TTL)
    remote.refuse.add("511100-R1")
    at = booked.starts_at + timedelta(hours=1)
    with pytest.raises(Conflict):
        handlers.reschedule_consultation(store, remote, booked.consultation_id, 0, (at, at, at), TTL)
    kept = handlers.get_consultation(store, booked.consultation_id)
    assert (kept.starts_at, kept.version, kept.hold_ids) == (booked.starts_at, booked.version, booked.hold_ids)
    assert [type(e) for e in store.events] == [ConsultationBooked]


def test_a_held_consultation_or_a_copy_from_below_is_not_moved() -> None:
    store = video()
    remote = FakeRemoteRooms()
    booked = handlers.book_consultation(store, remote, consultation(store), TTL)
    window = (store.now(), store.now() + timedelta(days=30), None)
    handlers.record_consultation_minutes(store, booked.consultation_id, 0, "纪要")
    with pytest.raises(FailedPrecondition) as held:
        handlers.reschedule_consultation(store, remote, booked.consultation_id, 0, window, TTL)
    assert held.value.current_state == "HELD"
    copy = replace(booked, consultation_id="con-below", host_node="511102", replica=True)
    with store.begin() as uow:
        handlers.note_consultation_replica(uow, copy)
    with pytest.raises(FailedPrecondition) as replica:
        handlers.reschedule_consultation(store, remote, "con-below", 0, window, TTL)
    assert replica.value.current_state == "REPLICA"


def test_every_unit_of_a_consultation_is_reminded_a_day_and_an_hour_before_and_again_after_a_move() -> None:
    store = video()
    remote = FakeRemoteRooms()
    booked = handlers.book_consultation(store, remote, tomorrow(store), TTL)
    store.clock = booked.starts_at - timedelta(hours=23)
    assert handlers.send_reminders(store) == 1
    assert handlers.send_reminders(store) == 0
    reminder = store.events[-1]
    assert isinstance(reminder, ConsultationReminder) and reminder.kind == "24h"
    assert [p.unit_id for p in reminder.consultation.participants] == ["unit-zj", "unit-city"]
    window = (store.now(), store.now() + timedelta(days=30), booked.starts_at + timedelta(hours=1))
    moved = handlers.reschedule_consultation(store, remote, booked.consultation_id, 0, window, TTL)
    store.clock = moved.starts_at - timedelta(minutes=30)
    assert handlers.send_reminders(store) == 2  # the new start's 24 h reminder, late, and its 1 h one
    kinds = [e.kind for e in store.events if isinstance(e, ConsultationReminder)]
    assert kinds == ["24h", "24h", "1h"]


def test_the_sweep_finishes_a_consultation_move_whose_confirmation_could_not_reach_the_other_node() -> None:
    store = video()
    remote = FakeRemoteRooms()
    booked = handlers.book_consultation(store, remote, consultation(store), TTL)
    (old_hold,) = booked.hold_ids
    remote.confirm_down = True
    window = (store.now(), store.now() + timedelta(days=30), None)
    moved = handlers.reschedule_consultation(store, remote, booked.consultation_id, 0, window, TTL)
    # Committed here; the old room there is kept until the new one is confirmed.
    assert moved.version == booked.version + 1 and old_hold not in remote.released
    remote.confirm_down = False
    assert handlers.sweep(store, remote, TTL)["released"] == 1
    assert set(moved.hold_ids) <= remote.confirmed and old_hold in remote.released


def test_a_consultation_whose_new_hold_lapsed_before_its_confirmation_is_cancelled_and_freed() -> None:
    store = video()
    remote = FakeRemoteRooms()
    booked = handlers.book_consultation(store, remote, consultation(store), TTL)
    remote.lapsed = True
    window = (store.now(), store.now() + timedelta(days=30), None)
    handlers.reschedule_consultation(store, remote, booked.consultation_id, 0, window, TTL)
    gone = handlers.get_consultation(store, booked.consultation_id)
    assert gone.state is ConsultationState.CANCELLED and "was lost while moving the consultation" in gone.cancel_reason
    assert isinstance(store.events[-1], ConsultationCancelled) and store.state.reservations == []
    assert set(booked.hold_ids) | set(gone.hold_ids) <= remote.released
