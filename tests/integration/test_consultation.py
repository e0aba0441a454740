"""远程会商 (remote consultation) across tiers, through real gRPC servers on real ports.

Three real nodes (province 510000 ← city 511100 ← county 511102), all five services each, linked over
gRPC, their video services knowing each other's addresses. The county hosts a consultation about its
own case between its 生态环境局 and the city's: the earliest common slot comes from each node's own
calendar and rooms (the city's room is taken by a leader's reception sessions every morning), the
city's unit and room are held at the city, the minutes are recorded at the county, and the case's
history shows the consultation booked and held, with its minutes, at the county, the city and the
province. Bad input changes nothing, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import grpc
import pytest
from lianxin.video.v1 import video_service_pb2 as video_pb2

from services.common.calendar import ChineseWorkingCalendar
from services.common.security import bearer_metadata, issue_token
from services.common.service import utc_now
from services.common.timeutil import CHINA, from_timestamp, to_timestamp
from services.node import Node
from tests.support.exchange_nodes import linked_nodes, three_tiers
from tests.support.helpers import wait_until
from tests.support.tiers import (
    CITY_ROOM,
    CITY_UNIT,
    COUNTY_ROOM,
    COUNTY_UNIT,
    Tiers,
    connect,
    handed_down_by_the_city,
    held_types,
    metrics,
    participants,
    quarantined,
    register,
    rooms,
    video,
    work_order,
)
from tests.support.tiers import placed_by_hand as placed

MINUTES = "市县两级生态环境局会商：由市中区生态环境局三日内现场核查，市局督导，结果报市局。"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def tiers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tiers]:
    admin_url = lambda: str(request.getfixturevalue("postgres_admin_url"))  # noqa: E731
    with three_tiers(request.param, tmp_path_factory.mktemp(f"consult-{request.param}"), admin_url) as nodes:
        tiers = Tiers(*nodes)
        connect([tiers.province, tiers.city, tiers.county])
        rooms(tiers.county, tiers.city)
        # The city's room serves a leader's receptions every weekday morning: not free for consultations.
        video(tiers.city).PublishSchedule(
            video_pb2.PublishScheduleRequest(
                actor="admin",
                schedule=video_pb2.Schedule(
                    leader_id="city-mayor",
                    node="511100",
                    weekly_patterns=[
                        video_pb2.WeeklyPattern(weekday=d, start_time="09:00", end_time="12:00") for d in range(1, 8)
                    ],
                    slot_minutes=30,
                    buffer_minutes=0,
                    max_per_session=6,
                    room_ids=[CITY_ROOM],
                ),
            ),
            timeout=5,
        )
        yield tiers


def first_afternoon_slot(now: datetime) -> datetime:
    """The first 30-minute grid start after ``now`` on a working day with an hour left before 17:30,
    in the afternoon (14:30-16:30): mornings are the city leader's receptions in the city's room."""
    calendar = ChineseWorkingCalendar()
    local = now.astimezone(CHINA)
    start = local.replace(minute=0 if local.minute < 30 else 30, second=0, microsecond=0) + timedelta(minutes=30)
    while True:
        if calendar.is_workday(start.date()) and (14, 30) <= (start.hour, start.minute) <= (16, 30):
            return start
        start += timedelta(minutes=30)


def test_a_consultation_is_booked_at_the_earliest_common_slot_held_and_its_minutes_reach_every_tier(
    tiers: Tiers,
) -> None:
    case = register(tiers.county, "511102")
    placed(tiers.county, case.case_id)
    county = video(tiers.county)
    expected = first_afternoon_slot(utc_now())

    proposed = county.ListConsultationSlots(
        video_pb2.ListConsultationSlotsRequest(participants=participants(), max_items=2), timeout=10
    ).slots
    assert [from_timestamp(s.starts_at) for s in proposed][:1] == [expected]

    booked = county.BookConsultation(
        video_pb2.BookConsultationRequest(
            case_id=case.case_id, actor="clerk", topic="河道污染的属地与监管责任", participants=participants()
        ),
        timeout=15,
    ).consultation
    assert booked.state == video_pb2.CONSULTATION_STATE_BOOKED
    assert from_timestamp(booked.starts_at) == expected
    assert from_timestamp(booked.ends_at) == expected + timedelta(hours=1)
    assert len(booked.hold_ids) == 1  # the city's unit and room, held at the city and confirmed there
    # The city's unit and room are taken at that hour now: the city says so itself.
    free = (
        video(tiers.city)
        .ListFreePeriods(
            video_pb2.ListFreePeriodsRequest(
                unit_id=CITY_UNIT,
                room_id=CITY_ROOM,
                not_before=booked.starts_at,
                not_after=booked.ends_at,
            ),
            timeout=5,
        )
        .periods
    )
    assert list(free) == []
    # The next consultation of the same units goes to the next common slot.
    again = county.ListConsultationSlots(
        video_pb2.ListConsultationSlotsRequest(participants=participants(), max_items=1), timeout=10
    ).slots
    next_start = from_timestamp(again[0].starts_at)
    assert next_start is not None and next_start >= expected + timedelta(hours=1)

    held = county.RecordConsultationMinutes(
        video_pb2.RecordConsultationMinutesRequest(
            consultation_id=booked.consultation_id, actor="clerk", expected_version=booked.version, minutes=MINUTES
        ),
        timeout=5,
    ).consultation
    assert held.state == video_pb2.CONSULTATION_STATE_HELD and held.minutes == MINUTES

    def county_history() -> list[str]:
        order = work_order(tiers.county, case.case_id)
        return [] if order is None else [f"{h.action}: {h.reason}" for h in order.history]

    wait_until(
        lambda: any(h.startswith("consultation_held") for h in county_history()), 20, "the minutes in the history"
    )
    booked_entry = next(h for h in county_history() if h.startswith("consultation_booked"))
    assert f"{expected:%Y-%m-%d %H:%M}" in booked_entry and "511100/lsj-sthjj" in booked_entry
    assert any(MINUTES in h for h in county_history() if h.startswith("consultation_held"))

    # The tiers above hold the consultation, its minutes and the history entries, nothing quarantined.
    for node in (tiers.city, tiers.province):

        def copied(node: Node = node) -> list[video_pb2.Consultation]:
            return list(
                video(node)
                .ListConsultations(video_pb2.ListConsultationsRequest(case_id=case.case_id), timeout=5)
                .consultations
            )

        wait_until(
            lambda node=node: (
                [c.state for c in copied(node)] == [video_pb2.CONSULTATION_STATE_HELD]
                and {"consultation_booked", "consultation_held"} <= set(held_types(node, case.case_id))
                and held_types(node, case.case_id).count("work_order_changed") >= 2
            ),
            30,
            f"the consultation and its minutes at {node.settings.node}",
        )
        copy = copied()[0]
        assert copy.replica and copy.minutes == MINUTES and copy.host_node == "511102"
        assert [(p.node, p.unit_id) for p in copy.participants] == [("511102", COUNTY_UNIT), ("511100", CITY_UNIT)]
        assert quarantined(node, case.case_id) == [], node.settings.node
    assert quarantined(tiers.county, case.case_id) == []
    # Every tier's warehouse counts the case as consulted (远程会商件), from the history entry.
    for node in (tiers.county, tiers.city, tiers.province):
        wait_until(
            lambda node=node: metrics(node, "511102", ["consulted"]) == {"consulted": 1},
            30,
            f"the consulted case in {node.settings.node}'s warehouse",
        )


def test_a_consultation_the_city_hosts_for_a_case_it_handed_down_joins_the_countys_history(tiers: Tiers) -> None:
    """The city hosts the units about a case the county handles: booked and held reach the county's
    history as commands to the owner, and its own events the province."""
    case = handed_down_by_the_city(tiers)
    video(tiers.city).RegisterRoom(
        video_pb2.RegisterRoomRequest(room=video_pb2.Room(room_id=COUNTY_ROOM, node="511102", name="会商室")),
        timeout=5,
    )
    booked = (
        video(tiers.city)
        .BookConsultation(
            video_pb2.BookConsultationRequest(case_id=case.case_id, topic="市级统筹", participants=participants()),
            timeout=15,
        )
        .consultation
    )
    assert booked.host_node == "511100" and booked.state == video_pb2.CONSULTATION_STATE_BOOKED
    # Moved once (改期) before it is held: the move reaches the county's history as a command too.
    video(tiers.city).RescheduleConsultation(
        video_pb2.RescheduleConsultationRequest(consultation_id=booked.consultation_id), timeout=20
    )
    video(tiers.city).RecordConsultationMinutes(
        video_pb2.RecordConsultationMinutesRequest(consultation_id=booked.consultation_id, minutes=MINUTES),
        timeout=5,
    )

    def county_history() -> list[str]:
        order = work_order(tiers.county, case.case_id)
        return [] if order is None else [h.action for h in order.history if h.reason and MINUTES in h.reason]

    wait_until(lambda: county_history() == ["consultation_held"], 30, "the city's minutes in the county's history")
    order = work_order(tiers.county, case.case_id)
    assert order is not None and "consultation_booked" in [h.action for h in order.history]
    wait_until(
        lambda: any("改期至" in h.reason for h in (work_order(tiers.county, case.case_id) or order).history),
        20,
        "the city's move in the county's history",
    )
    wait_until(
        lambda: {"consultation_booked", "consultation_held"} <= set(held_types(tiers.province, case.case_id)),
        30,
        "the consultation at the province",
    )
    for node in (tiers.county, tiers.city, tiers.province):
        assert quarantined(node, case.case_id) == [], node.settings.node


def test_bad_input_is_invalid_argument_naming_the_field_and_books_nothing(tiers: Tiers) -> None:
    case = register(tiers.county, "511102")
    county = video(tiers.county)
    unknown_room = [
        participants()[0],
        video_pb2.ConsultationParticipant(node="511100", unit_id=CITY_UNIT, room_id="511100-NOPE"),
    ]
    bad = {
        "topic": video_pb2.BookConsultationRequest(case_id=case.case_id, topic=" ", participants=participants()),
        "participants": video_pb2.BookConsultationRequest(
            case_id=case.case_id, topic="t", participants=participants()[:1]
        ),
        "participants[1].room_id": video_pb2.BookConsultationRequest(
            case_id=case.case_id, topic="t", participants=unknown_room
        ),
        "duration_minutes": video_pb2.BookConsultationRequest(
            case_id=case.case_id, topic="t", participants=participants(), duration_minutes=500
        ),
    }
    for field, request in bad.items():
        with pytest.raises(grpc.RpcError) as refused:
            county.BookConsultation(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert refused.value.details().startswith(f"{field}:"), refused.value.details()
    listed = county.ListConsultations(video_pb2.ListConsultationsRequest(case_id=case.case_id), timeout=5)
    assert list(listed.consultations) == []
    with pytest.raises(grpc.RpcError) as missing:
        county.RecordConsultationMinutes(
            video_pb2.RecordConsultationMinutesRequest(consultation_id="con-nope", minutes=" "), timeout=5
        )
    assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT and missing.value.details().startswith("minutes:")


def test_a_cancelled_consultation_frees_the_other_nodes_unit_and_room(tiers: Tiers) -> None:
    case = register(tiers.county, "511102")
    county = video(tiers.county)
    booked = county.BookConsultation(
        video_pb2.BookConsultationRequest(case_id=case.case_id, topic="复核", participants=participants()), timeout=15
    ).consultation
    window = video_pb2.ListFreePeriodsRequest(
        unit_id=CITY_UNIT, room_id=CITY_ROOM, not_before=booked.starts_at, not_after=booked.ends_at
    )
    assert list(video(tiers.city).ListFreePeriods(window, timeout=5).periods) == []
    cancelled = county.CancelConsultation(
        video_pb2.CancelConsultationRequest(consultation_id=booked.consultation_id, reason="改期"), timeout=10
    ).consultation
    assert cancelled.state == video_pb2.CONSULTATION_STATE_CANCELLED
    free = video(tiers.city).ListFreePeriods(window, timeout=5).periods
    assert [(from_timestamp(p.starts_at), from_timestamp(p.ends_at)) for p in free] == [
        (from_timestamp(booked.starts_at), from_timestamp(booked.ends_at))
    ]


def period(message: video_pb2.Consultation | video_pb2.FreePeriod) -> tuple[datetime, datetime]:
    starts, ends = from_timestamp(message.starts_at), from_timestamp(message.ends_at)
    assert starts is not None and ends is not None
    return starts, ends


def test_a_moved_consultation_holds_the_new_slot_before_freeing_the_old_and_the_move_reaches_every_tier(
    tiers: Tiers,
) -> None:
    case = register(tiers.county, "511102")
    placed(tiers.county, case.case_id)
    county = video(tiers.county)
    booked = county.BookConsultation(
        video_pb2.BookConsultationRequest(case_id=case.case_id, topic="改期会商", participants=participants()),
        timeout=15,
    ).consultation
    moved = county.RescheduleConsultation(
        video_pb2.RescheduleConsultationRequest(
            consultation_id=booked.consultation_id, actor="clerk", expected_version=booked.version
        ),
        timeout=20,
    ).consultation
    old, new = period(booked), period(moved)
    # The city still counted its unit and room busy at the old hour: the next common slot is after it.
    assert moved.version == booked.version + 1 and new[0] >= old[1] and new[1] - new[0] == old[1] - old[0]
    assert set(moved.hold_ids).isdisjoint(booked.hold_ids)

    def city_free(at: tuple[datetime, datetime]) -> list[tuple[datetime, datetime]]:
        window = video_pb2.ListFreePeriodsRequest(
            unit_id=CITY_UNIT, room_id=CITY_ROOM, not_before=to_timestamp(at[0]), not_after=to_timestamp(at[1])
        )
        return [period(p) for p in video(tiers.city).ListFreePeriods(window, timeout=5).periods]

    assert city_free(new) == [] and city_free(old) == [old]
    with pytest.raises(grpc.RpcError) as stale:
        county.RescheduleConsultation(
            video_pb2.RescheduleConsultationRequest(
                consultation_id=booked.consultation_id, expected_version=booked.version
            ),
            timeout=10,
        )
    assert stale.value.code() == grpc.StatusCode.ABORTED
    # The move is on the case's history (booked at the old hour, then at the new one), and the copies
    # above hold the new hour.
    moved_to = f"{new[0].astimezone(CHINA):%Y-%m-%d %H:%M}"

    def county_history() -> list[str]:
        order = work_order(tiers.county, case.case_id)
        return [] if order is None else [h.reason for h in order.history if h.action == "consultation_booked"]

    wait_until(lambda: len(county_history()) == 2, 20, "the move in the county's history")
    assert (
        f"改期至 {moved_to}" in county_history()[1]
        and f"原定 {old[0].astimezone(CHINA):%Y-%m-%d %H:%M}" in county_history()[1]
    )
    for node in (tiers.city, tiers.province):
        wait_until(
            lambda node=node: (
                [
                    from_timestamp(c.starts_at)
                    for c in video(node)
                    .ListConsultations(video_pb2.ListConsultationsRequest(case_id=case.case_id), timeout=5)
                    .consultations
                ]
                == [new[0]]
            ),
            30,
            f"the moved consultation at {node.settings.node}",
        )
        assert quarantined(node, case.case_id) == [], node.settings.node


KEY = "consultation-test-token-key"


def token(roles: list[str], unit: str = "") -> tuple[tuple[str, str]]:
    return bearer_metadata(issue_token(KEY.encode(), subject="op", node="511102", unit=unit, roles=roles, ttl_s=600))


def test_only_the_office_and_the_units_taking_part_book_and_read_the_minutes(tmp_path: Path) -> None:
    with linked_nodes("sqlite", tmp_path, lambda: "") as start:
        city = start("511100")
        county = start("511102", city, auth=True, token_key=KEY)
        connect([city, county])
        admin = token(["admin"])
        rooms(county, city, admin)
        stub = video(county)
        request = video_pb2.BookConsultationRequest(
            case_id="511102-20261207-000001", actor="op", topic="会商", participants=participants()
        )
        with pytest.raises(grpc.RpcError) as denied:
            stub.BookConsultation(request, metadata=token(["handler"], "lszq-jtj"), timeout=10)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        listed = stub.ListConsultations(
            video_pb2.ListConsultationsRequest(case_id=request.case_id), metadata=admin, timeout=5
        )
        assert list(listed.consultations) == []  # nothing booked by the refusal

        taking_part = token(["handler"], COUNTY_UNIT)
        booked = stub.BookConsultation(request, metadata=taking_part, timeout=15).consultation
        stub.RecordConsultationMinutes(
            video_pb2.RecordConsultationMinutesRequest(consultation_id=booked.consultation_id, minutes=MINUTES),
            metadata=taking_part,
            timeout=5,
        )

        def minutes_for(metadata: tuple[tuple[str, str]]) -> tuple[str, bool]:
            found = stub.ListConsultations(
                video_pb2.ListConsultationsRequest(case_id=request.case_id), metadata=metadata, timeout=5
            ).consultations[0]
            return found.minutes, found.minutes_withheld

        assert minutes_for(taking_part) == (MINUTES, False)
        assert minutes_for(token(["clerk"])) == (MINUTES, False)
        assert minutes_for(token(["auditor"])) == (MINUTES, False)
        assert minutes_for(token(["handler"], "lszq-jtj")) == ("", True)
        with pytest.raises(grpc.RpcError) as other_unit:
            stub.CancelConsultation(
                video_pb2.CancelConsultationRequest(consultation_id=booked.consultation_id),
                metadata=token(["handler"], "lszq-jtj"),
                timeout=5,
            )
        assert other_unit.value.code() == grpc.StatusCode.PERMISSION_DENIED
