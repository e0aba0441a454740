"""The embedded federation as `lianxin up` runs it: six real node processes on loopback."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.reflection import ReflectionClient
from services.common.regions import RegionTree
from services.federation import BUSINESS_SERVICES, Federation, health_statuses
from tests.support.helpers import running_federation, wait_until


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with running_federation(Path(tmp_path_factory.mktemp("federation"))) as started:
        yield started


def test_every_node_serves_all_five_services(federation: Federation) -> None:
    assert [n.code for n in federation.nodes] == ["510000", "511100", "511102", "511111", "510100", "510104"]
    for node in federation.nodes:
        statuses = health_statuses(node.address, BUSINESS_SERVICES)
        assert set(statuses.values()) == {"SERVING"}, (node.code, statuses)
    assert "511102" in federation.describe(RegionTree.load())
    # the national system simulator sits above the province
    assert federation.national_address is not None
    assert health_statuses(federation.national_address, ["lianxin.national.v1.NationalService"]) == {
        "lianxin.national.v1.NationalService": "SERVING"
    }


def test_reflection_client_lists_services_submits_a_case_and_stats_counts_it(federation: Federation) -> None:
    county = federation.node("511102")
    client = ReflectionClient(county.address, timeout=10)
    assert set(BUSINESS_SERVICES) <= set(client.service_names())
    [reply] = client.call(
        "lianxin.intake.v1.IntakeService/SubmitCase",
        {
            "channel": "CHANNEL_WEB",
            "channel_ref": "e2e-web-1",
            "title": "噪音扰民",
            "body": "乐山市市中区嘉州大道某小区门口夜间施工噪音扰民",
            "region_code": "511102",
            "category": "环境保护",
            "anonymous": True,
        },
    )
    case_id = reply["case"]["case_id"]
    assert case_id.startswith("511102-")

    def counted() -> bool:
        [reply] = client.call(
            "lianxin.stats.v1.StatsService/GetMetrics", {"region_code": "511102", "include_case_ids": True}
        )
        metrics = reply["metrics"]
        return case_id in metrics[0].get("case_ids", [])

    wait_until(counted, timeout=15, message="the case in the county's stats")


def test_metrics_port_shows_rpc_counters_and_latency_histograms(federation: Federation) -> None:
    county = federation.node("511102")
    with ReflectionClient(county.address, timeout=10) as client:
        list(client.call("lianxin.stats.v1.StatsService/GetMetrics", {"region_code": "511102"}))
    text = urllib.request.urlopen(f"http://127.0.0.1:{county.metrics_port}/metrics", timeout=5).read().decode()
    assert "lianxin_grpc_server_handled_total{" in text
    assert 'method="GetMetrics"' in text and 'code="OK"' in text
    assert "lianxin_grpc_server_handling_seconds_bucket{" in text


def test_demo_day_runs_through_the_federation(federation: Federation, messages_csv: Path) -> None:
    """`lianxin demo`: hotline case handled at the county, a province case handed down two tiers,
    the citizen's tracking and rating, a joint video reception, a 远程会商, a national transfer, every tier's
    statistics and reconcile's line."""
    from services.demo import run

    lines: list[str] = []
    assert run(base_port=federation.nodes[0].grpc_port, say=lines.append) == 0, "\n".join(lines)
    text = "\n".join(lines)
    assert "routed to unit" in text
    assert "REPLIED" in text
    assert "沙湾区 now owns it" in text
    assert "rated: satisfied" in text
    assert "COMPLETED: outcome recorded" in text
    assert "at the earliest common slot" in text and "minutes recorded, on 沙湾区's case history" in text  # 远程会商
    assert "reached 市中区 through 四川省 and 乐山市" in text
    assert text.splitlines()[-2].endswith(" 0 divergences"), text


def test_a_joint_video_reception_holds_a_room_at_another_node_process(federation: Federation) -> None:
    """`lianxin up` tells every node its peers: the city's leader books the county's terminal room."""
    import grpc
    from lianxin.video.v1 import video_service_pb2 as pb
    from lianxin.video.v1 import video_service_pb2_grpc as video_grpc

    city, county = federation.node("511100"), federation.node("511102")
    terminal = pb.Room(room_id="511102-T-joint", node="511102", name="市中区视频接访终端")
    with grpc.insecure_channel(city.address) as c1, grpc.insecure_channel(county.address) as c2:
        at_city, at_county = video_grpc.VideoServiceStub(c1), video_grpc.VideoServiceStub(c2)
        at_county.RegisterRoom(pb.RegisterRoomRequest(room=terminal), timeout=5)
        at_city.RegisterRoom(pb.RegisterRoomRequest(room=terminal), timeout=5)  # the city knows whom to ask
        at_city.RegisterRoom(pb.RegisterRoomRequest(room=pb.Room(room_id="511100-R-joint", node="511100")), timeout=5)
        at_city.PublishSchedule(
            pb.PublishScheduleRequest(
                actor="admin",
                schedule=pb.Schedule(
                    leader_id="city-leader-joint",
                    node="511100",
                    weekly_patterns=[
                        pb.WeeklyPattern(weekday=d, start_time="09:00", end_time="12:00") for d in range(1, 6)
                    ],
                    slot_minutes=30,
                    buffer_minutes=10,
                    max_per_session=4,
                    room_ids=["511100-R-joint"],
                ),
            ),
            timeout=5,
        )
        booked = at_city.BookVisit(
            pb.BookVisitRequest(
                case_id="511102-20261206-900001",
                actor="clerk",
                leader_id="city-leader-joint",
                room_ids=[terminal.room_id],
            ),
            timeout=20,
        ).visit
        assert booked.state == pb.VISIT_STATE_BOOKED
        assert set(booked.room_ids) == {"511100-R-joint", terminal.room_id} and len(booked.hold_ids) == 1
        # The county's room is taken for that period: a second visit at the same time is refused there.
        with pytest.raises(grpc.RpcError) as taken:
            at_city.BookVisit(
                pb.BookVisitRequest(
                    case_id="511102-20261206-900002",
                    actor="clerk",
                    leader_id="city-leader-joint",
                    room_ids=[terminal.room_id],
                    starts_at=booked.starts_at,
                ),
                timeout=20,
            )
        assert taken.value.code() == grpc.StatusCode.ABORTED


def test_lianxin_calendar_load_reaches_every_node_and_moves_their_days_left_metric(
    federation: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    # Last in this module: the other tests see the nodes as `lianxin up` starts them.
    from services.cli import main as lianxin
    from services.common.calendar import ChineseWorkingCalendar
    from services.common.service import utc_now
    from services.common.timeutil import china_date

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "calendar_2027_fixture.yaml"
    expected = ChineseWorkingCalendar.with_files([fixture]).covered_until(china_date(utc_now()))
    base = str(federation.nodes[0].grpc_port)
    assert lianxin(["calendar", "load", str(fixture), "--base-port", base]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [node.address for node in federation.nodes]
    assert all(f"calendar covers until {expected.isoformat()}" in line for line in lines), lines
    for node in federation.nodes:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        days = (expected - china_date(utc_now())).days
        assert f'lianxin_calendar_days_left{{region="{node.code}"}} {float(days)}' in text, node.code
