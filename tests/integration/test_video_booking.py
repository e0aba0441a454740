"""Video reception end to end on real gRPC servers and real databases (SQLite and PostgreSQL):
concurrent clerks, the holiday calendar, cancel, check-in limit, outcome events, reminders and
cross-node holds between two nodes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from lianxin.common.v1 import common_pb2
from lianxin.events.v1 import events_pb2
from lianxin.video.v1 import video_service_pb2 as pb
from lianxin.video.v1 import video_service_pb2_grpc as video_grpc
from sqlalchemy import select

from services.common.service import BusEvent, Subscription
from services.common.timeutil import CHINA, to_timestamp
from services.node import Node
from services.video.models import outbox
from tests.support.helpers import wait_until
from tests.support.video import FakeClock, local, setup_leader, start_node

# Valid resident ID numbers (GB 11643 check digits).
IDS = [
    "11010519491231002X",
    "440524188001010014",
    "510104199003071234",
    "110101199003070011",
    "110101199003070038",
    "110101199003070054",
]


def _check_digit(first17: str) -> str:
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    return "10X98765432"[sum(int(c) * w for c, w in zip(first17, weights, strict=True)) % 11]


def valid_id(n: int) -> str:
    body = f"51010219900307{n:03d}"
    return body + _check_digit(body)


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 10, 12, 8, 0, tzinfo=CHINA))  # Monday after National Day


@pytest.fixture()
def node(database_url: str, tmp_path: Path, clock: FakeClock) -> Iterator[Node]:
    url = None if database_url.startswith("sqlite") else database_url
    started = start_node("511102", url, tmp_path, clock, {})
    yield started
    started.stop(grace=1.0)


@pytest.fixture()
def stub(node: Node) -> Iterator[video_grpc.VideoServiceStub]:
    with grpc.insecure_channel(node.address) as ch:
        yield video_grpc.VideoServiceStub(ch)


def book(stub: video_grpc.VideoServiceStub, case_id: str, **kw: object) -> pb.Visit:
    request = pb.BookVisitRequest(case_id=case_id, actor="clerk", leader_id="leader-1", **kw)  # type: ignore[arg-type]
    visit: pb.Visit = stub.BookVisit(request).visit
    return visit


def outbox_payloads(node: Node, kind: str) -> list[events_pb2.EventEnvelope]:
    with node.engines["video"].connect() as conn:
        rows = conn.execute(select(outbox.c.body).where(outbox.c.event_type == kind)).all()
    out = []
    for (body,) in rows:
        env = events_pb2.EventEnvelope()
        env.ParseFromString(body)
        out.append(env)
    return out


def test_concurrent_clerks_booking_the_same_slot_exactly_one_wins(
    node: Node, stub: video_grpc.VideoServiceStub
) -> None:
    setup_leader(stub)
    wanted = to_timestamp(datetime(2026, 10, 14, 9, 0, tzinfo=CHINA))
    results: list[str] = []
    barrier = threading.Barrier(8)

    def clerk(i: int) -> None:
        with grpc.insecure_channel(node.address) as ch:
            own = video_grpc.VideoServiceStub(ch)
            barrier.wait()
            try:
                own.BookVisit(
                    pb.BookVisitRequest(
                        case_id=f"511102-20261012-{i:06d}", actor=f"clerk{i}", leader_id="leader-1", starts_at=wanted
                    )
                )
                results.append("won")
            except grpc.RpcError as error:
                results.append(error.code().name)

    threads = [threading.Thread(target=clerk, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("won") == 1
    assert results.count("ABORTED") == 7
    visits = stub.ListVisits(pb.ListVisitsRequest(leader_id="leader-1")).visits
    assert len(visits) == 1 and visits[0].state == pb.VISIT_STATE_BOOKED


def test_holiday_week_skips_holidays_and_uses_the_make_up_saturday(
    node: Node, stub: video_grpc.VideoServiceStub
) -> None:
    # 2026: 1-7 October are holidays (Wednesday 7 Oct too); Saturday 10 October is a make-up workday.
    setup_leader(stub, weekly=((3, "09:00", "10:10"), (6, "09:00", "10:10")))
    slots = stub.ListSlots(
        pb.ListSlotsRequest(
            leader_id="leader-1",
            not_before=to_timestamp(datetime(2026, 10, 1, tzinfo=CHINA)),
            not_after=to_timestamp(datetime(2026, 10, 22, tzinfo=CHINA)),
            max_items=10,
        )
    ).slots
    days = sorted({local(s.starts_at).date().isoformat() for s in slots})
    # Not Wed 7 Oct (holiday), not Sat 17 Oct (plain weekend); Sat 10 Oct (调休) and Wed 14/21 Oct.
    assert days == ["2026-10-10", "2026-10-14", "2026-10-21"]
    first = slots[0]
    assert (local(first.starts_at).hour, local(first.starts_at).minute) == (9, 0)
    assert local(first.ends_at) - local(first.starts_at) == timedelta(minutes=30)
    assert (local(slots[1].starts_at) - local(first.starts_at)) == timedelta(minutes=40)  # 30 + 10 buffer


def test_cancelled_visit_frees_its_slot_and_sessions_cap_receptions(
    node: Node, stub: video_grpc.VideoServiceStub
) -> None:
    setup_leader(stub, max_per_session=2)
    first = book(stub, "511102-20261012-000001")
    second = book(stub, "511102-20261012-000002")
    third = book(stub, "511102-20261012-000003")
    assert local(first.starts_at) == datetime(2026, 10, 14, 9, 0, tzinfo=CHINA)
    assert local(second.starts_at) == datetime(2026, 10, 14, 9, 40, tzinfo=CHINA)
    # The session of 14 October holds 2: the third goes to the next Wednesday.
    assert local(third.starts_at) == datetime(2026, 10, 21, 9, 0, tzinfo=CHINA)

    with pytest.raises(grpc.RpcError) as stale:
        stub.CancelVisit(pb.CancelVisitRequest(visit_id=first.visit_id, actor="clerk", expected_version=99))
    assert stale.value.code() == grpc.StatusCode.ABORTED
    cancelled = stub.CancelVisit(pb.CancelVisitRequest(visit_id=first.visit_id, actor="clerk", reason="citizen ill"))
    assert cancelled.visit.state == pb.VISIT_STATE_CANCELLED
    again = book(stub, "511102-20261012-000004")
    assert again.starts_at == first.starts_at
    moved = stub.RescheduleVisit(
        pb.RescheduleVisitRequest(visit_id=second.visit_id, actor="clerk", expected_version=second.version)
    ).visit
    assert local(moved.starts_at) == datetime(2026, 10, 21, 9, 40, tzinfo=CHINA)
    assert len(outbox_payloads(node, "visit_cancelled")) == 1


def test_naming_the_leaders_own_room_books_it_once(node: Node, stub: video_grpc.VideoServiceStub) -> None:
    setup_leader(stub)  # the leader's schedule already lists room 511102-R1
    visit = book(stub, "511102-20261012-000040", room_ids=["511102-R1"])
    assert visit.state == pb.VISIT_STATE_BOOKED
    assert local(visit.starts_at) == datetime(2026, 10, 14, 9, 0, tzinfo=CHINA)
    assert list(visit.room_ids) == ["511102-R1"]
    # The room is reserved once: the next visit naming it takes the next slot, not an error.
    second = book(stub, "511102-20261012-000041", room_ids=["511102-R1"])
    assert local(second.starts_at) == datetime(2026, 10, 14, 9, 40, tzinfo=CHINA)


def test_check_in_takes_at_most_five_representatives_and_masks_them(
    node: Node, stub: video_grpc.VideoServiceStub
) -> None:
    setup_leader(stub)
    visit = book(stub, "511102-20261012-000010")
    six = [common_pb2.Person(name=f"代表{i}", id_number=valid_id(i)) for i in range(6)]
    with pytest.raises(grpc.RpcError) as too_many:
        stub.CheckIn(pb.CheckInRequest(visit_id=visit.visit_id, actor="clerk", representatives=six))
    assert too_many.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert too_many.value.details().startswith("representatives")
    bad = [common_pb2.Person(name="张三", id_number=valid_id(1)[:-1] + ("0" if valid_id(1)[-1] != "0" else "1"))]
    with pytest.raises(grpc.RpcError) as wrong_digit:
        stub.CheckIn(pb.CheckInRequest(visit_id=visit.visit_id, actor="clerk", representatives=bad))
    assert wrong_digit.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "representatives[0].id_number" in wrong_digit.value.details()

    done = stub.CheckIn(pb.CheckInRequest(visit_id=visit.visit_id, actor="clerk", representatives=six[:5])).visit
    assert done.state == pb.VISIT_STATE_CHECKED_IN
    assert len(done.representatives) == 5
    assert all("*" in p.id_number and valid_id(0) not in p.id_number for p in done.representatives)


def test_outcome_reaches_the_case_history_as_an_event(node: Node, stub: video_grpc.VideoServiceStub) -> None:
    seen: list[events_pb2.EventEnvelope] = []

    def on_event(event: BusEvent) -> None:
        env = events_pb2.EventEnvelope()
        env.ParseFromString(event.body)
        seen.append(env)

    node.bus.subscribe(Subscription("test", "video", "visit_outcome_recorded", on_event))
    setup_leader(stub)
    visit = book(stub, "511102-20261012-000020")
    stub.RecordOutcome(
        pb.RecordOutcomeRequest(
            visit_id=visit.visit_id,
            actor="leader",
            minutes="群众反映噪音",
            decisions="责成区环保局一周内处理",
            recording_ref="rec://511102/2026/10/14/1",
        )
    )
    node.drain()
    wait_until(lambda: seen, 5.0, "visit_outcome_recorded on the bus")
    env = seen[0]
    assert env.case_id == "511102-20261012-000020"
    assert env.origin_service == "video"
    assert env.visit_outcome_recorded.decisions == "责成区环保局一周内处理"
    assert env.visit_outcome_recorded.recording_ref == "rec://511102/2026/10/14/1"
    assert [e.case_id for e in outbox_payloads(node, "visit_booked")] == ["511102-20261012-000020"]


def test_reminders_are_emitted_once_each_24h_and_1h_before(
    node: Node, stub: video_grpc.VideoServiceStub, clock: FakeClock
) -> None:
    setup_leader(stub)
    visit = book(stub, "511102-20261012-000030")
    sweep = node.parts["video"].timers[0].run
    starts = local(visit.starts_at)
    clock.now = starts - timedelta(hours=23)
    sweep()
    sweep()
    assert [e.visit_reminder.kind for e in outbox_payloads(node, "visit_reminder")] == ["24h"]
    clock.now = starts - timedelta(minutes=30)
    sweep()
    sweep()
    assert sorted(e.visit_reminder.kind for e in outbox_payloads(node, "visit_reminder")) == ["1h", "24h"]


@pytest.fixture()
def two_nodes(tmp_path: Path, clock: FakeClock) -> Iterator[tuple[Node, Node, FakeClock]]:
    """乐山市 (511100) where the leader sits; 市中区 (511102) owning the citizen's terminal. Separate
    clocks so the county's hold can lapse without touching the city."""
    county_clock = FakeClock(clock.now)
    peers: dict[str, str] = {}
    county = start_node("511102", None, tmp_path, county_clock, {})
    city = start_node("511100", None, tmp_path, clock, peers)
    peers["511102"] = county.address
    yield city, county, county_clock
    city.stop(grace=1.0)
    county.stop(grace=1.0)


def test_cross_node_booking_holds_confirms_and_expires(two_nodes: tuple[Node, Node, FakeClock]) -> None:
    city, county, county_clock = two_nodes
    with grpc.insecure_channel(city.address) as c1, grpc.insecure_channel(county.address) as c2:
        city_stub, county_stub = video_grpc.VideoServiceStub(c1), video_grpc.VideoServiceStub(c2)
        setup_leader(city_stub, node="511100")
        terminal = pb.Room(room_id="511102-T1", node="511102", name="市中区视频接访终端")
        city_stub.RegisterRoom(pb.RegisterRoomRequest(room=terminal))
        county_stub.RegisterRoom(pb.RegisterRoomRequest(room=terminal))

        # Someone at the county already took the terminal at 9:00 on 14 October (a held slot).
        first = datetime(2026, 10, 14, 9, 0, tzinfo=CHINA)
        taken = county_stub.HoldRoom(
            pb.HoldRoomRequest(
                hold_id="h-local",
                room_id="511102-T1",
                requesting_node="511103",
                starts_at=to_timestamp(first),
                ends_at=to_timestamp(first + timedelta(minutes=30)),
                ttl=Duration(seconds=30),
            )
        ).hold
        assert taken.state == pb.HOLD_STATE_HELD

        visit = city_stub.BookVisit(
            pb.BookVisitRequest(
                case_id="511102-20261012-000040", actor="clerk", leader_id="leader-1", room_ids=["511102-T1"]
            )
        ).visit
        assert visit.state == pb.VISIT_STATE_BOOKED
        assert local(visit.starts_at) == first + timedelta(minutes=40)  # the county refused 9:00
        assert set(visit.room_ids) == {"511100-R1", "511102-T1"}
        (hold_id,) = visit.hold_ids
        confirmed = county_stub.ConfirmHold(pb.ConfirmHoldRequest(hold_id=hold_id, requesting_node="511100")).hold
        assert confirmed.state == pb.HOLD_STATE_CONFIRMED  # idempotent: already confirmed by the city

        # The unconfirmed hold lapses after its time-to-live: the sweep frees the terminal.
        county_clock.now = county_clock.now + timedelta(seconds=31)
        county.parts["video"].timers[0].run()
        with pytest.raises(grpc.RpcError) as late:
            county_stub.ConfirmHold(pb.ConfirmHoldRequest(hold_id="h-local", requesting_node="511103"))
        assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        again = county_stub.HoldRoom(
            pb.HoldRoomRequest(
                hold_id="h-again",
                room_id="511102-T1",
                requesting_node="511103",
                starts_at=to_timestamp(first),
                ends_at=to_timestamp(first + timedelta(minutes=30)),
            )
        ).hold
        assert again.state == pb.HOLD_STATE_HELD
        # The confirmed terminal stays booked; cancelling at the city releases it at the county.
        clash = county_stub.HoldRoom(
            pb.HoldRoomRequest(
                hold_id="h-clash",
                room_id="511102-T1",
                requesting_node="511103",
                starts_at=visit.starts_at,
                ends_at=visit.ends_at,
            )
        ).hold
        assert clash.state == pb.HOLD_STATE_REFUSED
        city_stub.CancelVisit(pb.CancelVisitRequest(visit_id=visit.visit_id, actor="clerk", reason="moved"))
        after = county_stub.HoldRoom(
            pb.HoldRoomRequest(
                hold_id="h-after",
                room_id="511102-T1",
                requesting_node="511103",
                starts_at=visit.starts_at,
                ends_at=visit.ends_at,
            )
        ).hold
        assert after.state == pb.HOLD_STATE_HELD


def test_unreachable_remote_node_leaves_nothing_held(tmp_path: Path, clock: FakeClock) -> None:
    city = start_node("511100", None, tmp_path, clock, {"511102": "127.0.0.1:1"})
    try:
        with grpc.insecure_channel(city.address) as ch:
            stub = video_grpc.VideoServiceStub(ch)
            setup_leader(stub, node="511100")
            stub.RegisterRoom(pb.RegisterRoomRequest(room=pb.Room(room_id="511102-T1", node="511102")))
            with pytest.raises(grpc.RpcError) as down:
                book(stub, "511102-20261012-000050", room_ids=["511102-T1"])
            assert down.value.code() == grpc.StatusCode.UNAVAILABLE
            # The leader's slot was given back: a local-only booking gets the very first slot.
            local_only = book(stub, "511102-20261012-000051")
            assert local(local_only.starts_at) == datetime(2026, 10, 14, 9, 0, tzinfo=CHINA)
            states = [v.state for v in stub.ListVisits(pb.ListVisitsRequest(leader_id="leader-1")).visits]
            assert sorted(states) == sorted([pb.VISIT_STATE_CANCELLED, pb.VISIT_STATE_BOOKED])
    finally:
        city.stop(grace=1.0)


def test_a_case_page_s_video_side_in_one_call_reads_as_the_four_lists(
    node: Node, stub: video_grpc.VideoServiceStub
) -> None:
    setup_leader(stub)
    case_id = "511102-20261012-000050"
    visit = book(stub, case_id)
    book(stub, "511102-20261012-000051")  # another case's visit is not this case's
    both = stub.GetCaseVideo(pb.GetCaseVideoRequest(case_id=case_id, with_leaders=True, with_rooms=True))
    assert [v.visit_id for v in both.visits] == [visit.visit_id]
    assert list(both.visits) == list(stub.ListVisits(pb.ListVisitsRequest(case_id=case_id)).visits)
    assert list(both.consultations) == list(
        stub.ListConsultations(pb.ListConsultationsRequest(case_id=case_id)).consultations
    )
    assert list(both.leaders) == list(stub.ListReceivingLeaders(pb.ListReceivingLeadersRequest()).leaders)
    assert [r.room_id for r in both.rooms] == ["511102-R1"]
    bare = stub.GetCaseVideo(pb.GetCaseVideoRequest(case_id=case_id))
    assert [v.visit_id for v in bare.visits] == [visit.visit_id] and not bare.leaders and not bare.rooms
    with pytest.raises(grpc.RpcError) as missing:
        stub.GetCaseVideo(pb.GetCaseVideoRequest(case_id=" "))
    assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
