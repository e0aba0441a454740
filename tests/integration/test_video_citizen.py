"""A citizen books a leader's video visit for their own case, on a real node (SQLite and PostgreSQL).

The citizen proves the case as for tracking (查询码 + last four phone digits): TrackCase answers a
case pass, and video's public methods take it instead of an operator token. The same rules as a
clerk's booking hold (a free slot inside the calendar), plus one active booking per case; bad input
is INVALID_ARGUMENT naming the field and changes nothing; another case's pass or visit is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from lianxin.video.v1 import video_service_pb2 as video_pb2
from lianxin.video.v1 import video_service_pb2_grpc as video_grpc

from services.common.interceptors import FIELD_METADATA_KEY
from services.common.security import bearer_metadata, issue_token
from services.common.settings import Settings
from services.node import Node

KEY = "video-citizen-test-key"
LEADER = "leader-wang"


@pytest.fixture()
def node(database_url: str, tmp_path: Path) -> Iterator[Node]:
    settings = Settings(
        node="511102",
        data_dir=tmp_path,
        # SQLite: each service its own file under data_dir (the node's default); PostgreSQL: one database.
        database_url=None if database_url.startswith("sqlite") else database_url,
        auth=True,
        token_key=KEY,
        citizen_rate_per_min=1000,
        relay_interval_s=0.05,
    )
    started = Node(settings).start()
    admin = bearer_metadata(issue_token(KEY.encode(), subject="admin", node="511102", roles=["admin"]))
    with grpc.insecure_channel(started.address) as channel:
        video = video_grpc.VideoServiceStub(channel)
        room = video_pb2.Room(room_id="lszq-jfs-1", node="511102", name="市中区视频接访室")
        video.RegisterRoom(video_pb2.RegisterRoomRequest(room=room), metadata=admin, timeout=10)
        schedule = video_pb2.Schedule(
            leader_id=LEADER,
            leader_name="王某某（区长）",
            node="511102",
            weekly_patterns=[
                video_pb2.WeeklyPattern(weekday=d, start_time="09:00", end_time="17:00") for d in range(1, 8)
            ],
            slot_minutes=30,
            buffer_minutes=10,
            max_per_session=8,
            room_ids=[room.room_id],
        )
        video.PublishSchedule(
            video_pb2.PublishScheduleRequest(actor="admin", schedule=schedule), metadata=admin, timeout=10
        )
    yield started
    started.stop(grace=1.0)


@pytest.fixture()
def channel(node: Node) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(node.address) as ch:
        yield ch


def case_pass(channel: grpc.Channel, ref: str, phone: str) -> tuple[str, str]:
    """A citizen's web petition, tracked as the citizen tracks it: (case id, case pass)."""
    intake = intake_grpc.IntakeServiceStub(channel)
    submitted = intake.SubmitCase(
        intake_pb2.SubmitCaseRequest(
            channel=common_pb2.CHANNEL_WEB,
            channel_ref=ref,
            title="小区门口夜间施工噪音扰民",
            body="乐山市市中区嘉州大道某小区门口夜间施工，噪音扰民，希望领导接访。",
            category="环境保护",
            region_code="511102",
            complainant=common_pb2.Person(name="张三", phone=phone),
        ),
        timeout=10,
    )
    tracked = intake.TrackCase(
        intake_pb2.TrackCaseRequest(tracking_code=submitted.tracking_code, phone_last4=phone[-4:]), timeout=10
    )
    assert tracked.case_pass
    return submitted.case.case_id, tracked.case_pass


def refused(call: Any, request: Any) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=10)
    error = caught.value
    field = dict(error.trailing_metadata() or ()).get(FIELD_METADATA_KEY, "")
    return error.code(), field, error.details()


def free_slots(video: video_grpc.VideoServiceStub) -> list[video_pb2.Slot]:
    admin = bearer_metadata(issue_token(KEY.encode(), subject="portal", node="511102", roles=["auditor"]))
    request = video_pb2.ListSlotsRequest(leader_id=LEADER, max_items=200)
    return list(video.ListSlots(request, metadata=admin, timeout=10).slots)


def visits_of_leader(video: video_grpc.VideoServiceStub) -> int:
    admin = bearer_metadata(issue_token(KEY.encode(), subject="admin", node="511102", roles=["admin"]))
    reply = video.ListVisits(video_pb2.ListVisitsRequest(leader_id=LEADER), metadata=admin, timeout=10)
    return int(reply.page.total_size)


def test_citizen_lists_leaders_books_sees_and_cancels_a_visit_for_their_own_case(channel: grpc.Channel) -> None:
    video = video_grpc.VideoServiceStub(channel)
    leaders = video.ListReceivingLeaders(video_pb2.ListReceivingLeadersRequest(), timeout=10).leaders
    assert [(item.leader_id, item.leader_name) for item in leaders] == [(LEADER, "王某某（区长）")]
    assert leaders[0].next_free_at.seconds  # no token needed: a public method
    slots = free_slots(video)
    # A slot more than a day ahead, so the citizen may still cancel it online.
    slot = next(s for s in slots if s.starts_at.ToDatetime() - slots[0].starts_at.ToDatetime() > timedelta(days=2))
    _case, mine = case_pass(channel, "web-1", "13812345678")

    booked = video.BookCitizenVisit(
        video_pb2.BookCitizenVisitRequest(case_pass=mine, leader_id=LEADER, starts_at=slot.starts_at), timeout=10
    ).visit
    assert booked.state == video_pb2.VISIT_STATE_BOOKED and booked.leader_name == "王某某（区长）"
    assert booked.starts_at == slot.starts_at and booked.can_cancel
    assert slot.starts_at not in [s.starts_at for s in free_slots(video)]  # the slot is taken
    listed = video.ListCitizenVisits(video_pb2.ListCitizenVisitsRequest(case_pass=mine), timeout=10).visits
    assert [v.visit_id for v in listed] == [booked.visit_id]

    # One active booking per case: a second slot is refused, and nothing is booked.
    other = slots[-1]
    code, _field, details = refused(
        video.BookCitizenVisit,
        video_pb2.BookCitizenVisitRequest(case_pass=mine, leader_id=LEADER, starts_at=other.starts_at),
    )
    assert code is grpc.StatusCode.FAILED_PRECONDITION and "already has a video visit" in details
    assert visits_of_leader(video) == 1

    cancelled = video.CancelCitizenVisit(
        video_pb2.CancelCitizenVisitRequest(case_pass=mine, visit_id=booked.visit_id, reason="时间冲突"), timeout=10
    ).visit
    assert cancelled.state == video_pb2.VISIT_STATE_CANCELLED and not cancelled.can_cancel
    assert slot.starts_at in [s.starts_at for s in free_slots(video)]  # given back
    # Cancelled, the case may book again.
    again = video.BookCitizenVisit(
        video_pb2.BookCitizenVisitRequest(case_pass=mine, leader_id=LEADER, starts_at=other.starts_at), timeout=10
    ).visit
    assert again.state == video_pb2.VISIT_STATE_BOOKED


def test_bad_input_names_the_field_and_another_citizens_case_is_refused(channel: grpc.Channel) -> None:
    video = video_grpc.VideoServiceStub(channel)
    slot = free_slots(video)[3]
    _mine_id, mine = case_pass(channel, "web-2", "13812345678")
    _theirs_id, theirs = case_pass(channel, "web-3", "13987654321")
    book = video.BookCitizenVisit

    def request(**changes: Any) -> video_pb2.BookCitizenVisitRequest:
        fields = {"case_pass": mine, "leader_id": LEADER, "starts_at": slot.starts_at, **changes}
        return video_pb2.BookCitizenVisitRequest(**fields)

    assert refused(book, request(leader_id=""))[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "leader_id")
    assert refused(book, request(starts_at=Timestamp()))[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "starts_at")
    assert refused(book, request(starts_at=Timestamp(seconds=86400)))[:2] == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "starts_at",
    )
    assert refused(book, request(case_pass=""))[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "case_pass")
    assert refused(book, request(case_pass="LX12345678"))[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "case_pass")
    # The pass names its case: changing the case id in it (to book someone else's case) breaks its seal.
    _prefix, case_id, expiry, mac = theirs.split(".", 1)[0], *theirs.split(".", 1)[1].rsplit(".", 2)
    forged = f"cp1.{case_id[:-1]}{'0' if case_id[-1] != '0' else '1'}.{expiry}.{mac}"
    assert refused(book, request(case_pass=forged))[0] is grpc.StatusCode.PERMISSION_DENIED
    assert refused(book, request(leader_id="leader-nobody"))[0] is grpc.StatusCode.NOT_FOUND
    assert visits_of_leader(video) == 0  # nothing was booked by any of these

    theirs_visit = book(request(case_pass=theirs), timeout=10).visit
    # Another citizen's pass cannot cancel it, nor see it.
    code, _field, _details = refused(
        video.CancelCitizenVisit, video_pb2.CancelCitizenVisitRequest(case_pass=mine, visit_id=theirs_visit.visit_id)
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert not video.ListCitizenVisits(video_pb2.ListCitizenVisitsRequest(case_pass=mine), timeout=10).visits
    assert refused(video.CancelCitizenVisit, video_pb2.CancelCitizenVisitRequest(case_pass=mine, visit_id=""))[:2] == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "visit_id",
    )
    # The slot theirs took is not free for mine.
    code, _field, _details = refused(book, request())
    assert code in (grpc.StatusCode.ABORTED, grpc.StatusCode.FAILED_PRECONDITION)
    assert visits_of_leader(video) == 1
