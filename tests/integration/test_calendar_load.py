"""Loading next year's holiday calendar into running nodes over gRPC (`lianxin calendar load`).

A county and its city run as real nodes (SQLite files, or each on its own PostgreSQL database) on
8 December 2026, when the bundled calendar ends on 31 December: a petition's 60-day settlement
limit is counted Monday-Friday (provisional) and video offers no January slots. Loading the 2027
file (the test fixture, invented dates) recomputes the deadline with a history entry that reaches the
city, opens January's video slots, moves the days-left metric, and survives a restart.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path

import grpc
import pytest
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc
from lianxin.video.v1 import video_service_pb2 as video_pb2
from lianxin.video.v1 import video_service_pb2_grpc as video_grpc

from services.cli import main as lianxin
from services.common.timeutil import CHINA, to_timestamp
from services.node import Node
from services.routing.handlers import work_order_id_for
from tests.support.exchange_nodes import Start, free_port, linked_nodes, replicas
from tests.support.helpers import wait_until

FIXTURE_2027 = Path(__file__).resolve().parents[1] / "fixtures" / "calendar_2027_fixture.yaml"
TODAY = datetime(2026, 12, 8, 10, 0, tzinfo=CHINA)  # 60 days later is Saturday 6 Feb 2027, in the fixture's 春节


def today() -> datetime:
    return TODAY


@pytest.fixture(params=["sqlite", "postgres"])
def start(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Start]:
    with linked_nodes(request.param, tmp_path, lambda: str(request.getfixturevalue("postgres_admin_url"))) as start:
        yield start


def routing(node: Node) -> routing_grpc.RoutingServiceStub:
    return routing_grpc.RoutingServiceStub(grpc.insecure_channel(node.address))


def video(node: Node) -> video_grpc.VideoServiceStub:
    return video_grpc.VideoServiceStub(grpc.insecure_channel(node.address))


def submit_petition(node: Node) -> str:
    """A web petition: settled within 60 days, so its deadline lands in February 2027."""
    reply = intake_grpc.IntakeServiceStub(grpc.insecure_channel(node.address)).SubmitCase(
        intake_pb2.SubmitCaseRequest(
            channel=common_pb2.CHANNEL_WEB,
            channel_ref="web-calendar-1",
            title="小区门口夜间施工噪音扰民",
            body="乐山市市中区嘉州大道某小区门口夜间施工，噪音扰民，希望有关部门处理。",
            category="环境保护",
            region_code="511102",
            complainant=common_pb2.Person(name="张三", phone="13912345678"),
        ),
        timeout=5,
    )
    case_id: str = reply.case.case_id
    return case_id


def work_order(node: Node, case_id: str) -> routing_pb2.WorkOrder:
    found: list[routing_pb2.WorkOrder] = []

    def placed() -> bool:
        try:
            reply = routing(node).GetWorkOrder(
                routing_pb2.GetWorkOrderRequest(work_order_id=work_order_id_for(case_id, node.code)), timeout=5
            )
        except grpc.RpcError as error:
            if error.code() is grpc.StatusCode.NOT_FOUND:
                return False
            raise
        found[:] = [reply.work_order]
        return True

    wait_until(placed, message=f"work order of {case_id} at {node.code}")
    return found[0]


def due_day(order: routing_pb2.WorkOrder, kind: str) -> date:
    (deadline,) = [d for d in order.deadlines if d.kind == kind]
    return deadline.due_at.ToDatetime(tzinfo=CHINA).date()


def january_slots(node: Node) -> video_pb2.ListSlotsResponse:
    reply: video_pb2.ListSlotsResponse = video(node).ListSlots(
        video_pb2.ListSlotsRequest(
            leader_id="leader-1",
            not_before=to_timestamp(datetime(2027, 1, 4, 0, 0, tzinfo=CHINA)),
            not_after=to_timestamp(datetime(2027, 1, 8, 23, 0, tzinfo=CHINA)),
            max_items=50,
        ),
        timeout=5,
    )
    return reply


def publish_weekday_mornings(node: Node) -> None:
    stub = video(node)
    stub.RegisterRoom(video_pb2.RegisterRoomRequest(room=video_pb2.Room(room_id="511102-R1", node="511102")))
    stub.PublishSchedule(
        video_pb2.PublishScheduleRequest(
            actor="admin",
            schedule=video_pb2.Schedule(
                leader_id="leader-1",
                node="511102",
                weekly_patterns=[
                    video_pb2.WeeklyPattern(weekday=w, start_time="09:00", end_time="12:00") for w in range(1, 6)
                ],
                slot_minutes=30,
                buffer_minutes=10,
                max_per_session=4,
                room_ids=["511102-R1"],
            ),
        ),
        timeout=5,
    )


def days_left_metric(node: Node) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=5).read().decode()
    match = re.search(rf'^lianxin_calendar_days_left\{{region="{node.code}"\}} (\S+)$', text, re.MULTILINE)
    assert match is not None, "lianxin_calendar_days_left missing from /metrics"
    return float(match.group(1))


def held(node: Node, case_id: str) -> list[tuple[str, int]]:
    """The case's events a node holds (its own, or replicated up from below), oldest first."""
    return sorted(((e.event_type, e.version) for e in replicas(node, case_id=case_id).entries), key=lambda e: e[1])


def test_loading_2027_recomputes_provisional_deadline_replicates_it_and_opens_january_slots(
    start: Start, capsys: pytest.CaptureFixture[str]
) -> None:
    city = start("511100", clock=today, sweep_interval_s=3600)
    county = start("511102", city, clock=today, sweep_interval_s=3600)
    publish_weekday_mornings(county)

    # Before: no January slots, and the node says why.
    before = january_slots(county)
    assert list(before.slots) == []
    assert "the official holiday calendar for 2027 is not loaded" in before.calendar_notice
    assert days_left_metric(county) == (date(2026, 12, 31) - TODAY.date()).days

    case_id = submit_petition(county)
    order = work_order(county, case_id)
    assert "settle" in order.provisional_deadlines
    # Monday-Friday: Saturday 6 Feb moves to Monday 8 Feb.
    assert due_day(order, "settle") == date(2027, 2, 8)
    county.drain()  # every event of the case so far is on the county's up-log
    # A booking in January finds nothing, and the refusal says why.
    with pytest.raises(grpc.RpcError) as refused:
        video(county).BookVisit(
            video_pb2.BookVisitRequest(
                case_id=case_id,
                actor="clerk-1",
                leader_id="leader-1",
                not_before=to_timestamp(datetime(2027, 1, 4, 0, 0, tzinfo=CHINA)),
                not_after=to_timestamp(datetime(2027, 1, 8, 23, 0, tzinfo=CHINA)),
            ),
            timeout=5,
        )
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "the official holiday calendar for 2027 is not loaded" in (refused.value.details() or "")
    wait_until(lambda: held(city, case_id) == held(county, case_id), message="the case replicated to the city")
    changed_before = held(city, case_id)

    assert lianxin(["calendar", "load", str(FIXTURE_2027), "--node", county.address, "--actor", "admin-1"]) == 0
    out = capsys.readouterr().out
    assert f"{county.address}: loaded 2027 from {FIXTURE_2027.name}; 1 work orders" in out
    assert "calendar covers until 2027-12-31" in out

    # The deadline is counted again on the fixture's 春节 (5-12 Feb): the next working day is Mon 15 Feb.
    after = work_order(county, case_id)
    assert list(after.provisional_deadlines) == []
    assert due_day(after, "settle") == date(2027, 2, 15)
    last = after.history[-1]
    assert last.action == "recompute_deadlines"
    assert "settle due 2027-02-08 → 2027-02-15 (official calendar for 2027 loaded)" in last.reason
    assert after.version == order.version + 1

    # The city holds the recompute too (a WorkOrderChanged replicated up, one per moved deadline).
    expected = [*changed_before, ("work_order_changed", changed_before[-1][1] + 1)]
    wait_until(lambda: held(city, case_id) == expected, message="the recompute replicated to the city")

    slots = january_slots(county)
    assert slots.calendar_notice == ""
    starts = [s.starts_at.ToDatetime(tzinfo=CHINA) for s in slots.slots]
    assert starts and starts[0] == datetime(2027, 1, 4, 9, 0, tzinfo=CHINA)  # the Monday after 元旦
    assert days_left_metric(county) == (date(2027, 12, 31) - TODAY.date()).days

    # Loading again changes nothing more: no provisional deadline is left.
    assert lianxin(["calendar", "load", str(FIXTURE_2027), "--node", county.address]) == 0
    assert "; 0 work orders" in capsys.readouterr().out
    assert len(work_order(county, case_id).history) == len(after.history)


def test_a_loaded_year_survives_a_restart_and_show_lists_it(start: Start, capsys: pytest.CaptureFixture[str]) -> None:
    county = start("511102", clock=today, sweep_interval_s=3600)
    assert lianxin(["calendar", "load", str(FIXTURE_2027), "--node", county.address, "--actor", "admin-1"]) == 0
    county.stop(grace=0.5)

    again = start("511102", clock=today, sweep_interval_s=3600)
    publish_weekday_mornings(again)
    assert january_slots(again).slots, "January slots after a restart"
    capsys.readouterr()
    assert lianxin(["calendar", "show", "--node", again.address]) == 0
    out = capsys.readouterr().out
    assert f"{again.address}: calendar covers until 2027-12-31 (388 days left)" in out
    assert re.search(r"2027  loaded from calendar_2027_fixture\.yaml by admin-1 at \d{4}-\d\d-\d\d", out)
    assert "2004-2026  bundled chinese-calendar data" in out


def test_a_bad_calendar_is_refused_with_the_key_and_changes_nothing(start: Start) -> None:
    county = start("511102", clock=today, sweep_interval_s=3600)
    bad = "year: 2027\nholidays: [{name: 春节, from: 2027-02-05, to: 2027-02-12}]\nworkdays: [2027-02-15]\n".encode()
    with pytest.raises(grpc.RpcError) as refused:
        routing(county).LoadCalendar(
            routing_pb2.LoadCalendarRequest(file_name="calendar_2027.yaml", content=bad, actor="admin-1"), timeout=5
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == (
        "content: calendar_2027.yaml: workdays[0]: 2027-02-15 is a Monday; make-up workdays fall on weekends"
    )
    listed = routing(county).ListCalendarYears(routing_pb2.ListCalendarYearsRequest(), timeout=5)
    assert listed.covered_until == "2026-12-31"
    assert 2027 not in [y.year for y in listed.years]


def test_load_reports_a_node_it_cannot_reach_on_one_line(start: Start, capsys: pytest.CaptureFixture[str]) -> None:
    county = start("511102", clock=today, sweep_interval_s=3600)
    nobody = f"127.0.0.1:{free_port()}"
    code = lianxin(["calendar", "load", str(FIXTURE_2027), "--node", county.address, "--node", nobody])
    assert code == 4  # unavailable, as for every lianxin command
    captured = capsys.readouterr()
    assert f"{county.address}: loaded 2027" in captured.out
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(f"{nobody}: failed: UNAVAILABLE")
