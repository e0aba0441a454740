"""A case page's video reads (issue 17): the visits, consultations, schedules and rooms read by
prebuilt Core statements are the ones the ORM loads they replaced read, and GetCaseVideo's shared read
(a Core connection, no ORM session) answers what a unit of work of its own does, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import grpc
import pytest
from lianxin.common.v1 import common_pb2
from lianxin.video.v1 import video_service_pb2 as pb
from lianxin.video.v1 import video_service_pb2_grpc as video_grpc
from sqlalchemy import select

from services.common.calendar import ChineseWorkingCalendar
from services.common.crypto import node_cipher
from services.common.timeutil import CHINA
from services.node import Node
from services.video.domain import Room
from services.video.models import RoomRow, ScheduleRow, VisitRow
from services.video.ports import VisitFilter
from services.video.rows import schedule_from_row, to_visit
from services.video.store import VideoStore
from services.video.unit_of_work import SqlVideoUnitOfWork
from tests.support.video import FakeClock, setup_leader, start_node

NODE = "511102"
CASES = ("511102-20261012-000001", "511102-20261012-000002")


@pytest.fixture()
def node(database_url: str, tmp_path: Path) -> Iterator[Node]:
    url = None if database_url.startswith("sqlite") else database_url
    started = start_node(NODE, url, tmp_path, FakeClock(datetime(2026, 10, 12, 8, 0, tzinfo=CHINA)), {})
    yield started
    started.stop(grace=1.0)


def test_visit_lists_schedules_and_rooms_are_what_the_orm_loaded(node: Node) -> None:
    with grpc.insecure_channel(node.address) as channel:
        stub = video_grpc.VideoServiceStub(channel)
        for leader in ("leader-1", "leader-2"):
            setup_leader(stub, leader=leader)
        booked = [
            stub.BookVisit(
                pb.BookVisitRequest(case_id=CASES[n % 2], actor="clerk", leader_id=f"leader-{n % 2 + 1}")
            ).visit
            for n in range(5)
        ]
        person = common_pb2.Person(name="代表", id_number="11010519491231002X")
        stub.CheckIn(pb.CheckInRequest(visit_id=booked[0].visit_id, actor="clerk", representatives=[person]))
    cipher = node_cipher(node.settings)
    store = VideoStore(
        node.parts["video"].session_factory,  # type: ignore[arg-type]
        cipher=cipher,
        node=NODE,
        calendar=ChineseWorkingCalendar(),
        clock=lambda: datetime(2026, 10, 12, 8, 0, tzinfo=CHINA),
    )
    middle = datetime(2026, 10, 15, tzinfo=CHINA)
    shapes = [VisitFilter(case_id=c) for c in (*CASES, "none")]
    shapes += [VisitFilter(leader_id="leader-1"), VisitFilter(leader_id="leader-2", not_before=middle)]
    shapes += [VisitFilter(case_id=CASES[0], not_after=middle), VisitFilter(leader_id="leader-1", case_id=CASES[0])]
    with store.begin() as uow:
        session = uow._s
        every = session.scalars(select(VisitRow).order_by(VisitRow.starts_at, VisitRow.visit_id)).all()
        assert any(r.representatives for r in every)
        for wanted in shapes:
            expected = [
                to_visit(cipher, r)
                for r in every
                if (not wanted.case_id or r.case_id == wanted.case_id)
                and (not wanted.leader_id or r.leader_id == wanted.leader_id)
                and (not wanted.not_before or r.starts_at.astimezone(CHINA) >= wanted.not_before)
                and (not wanted.not_after or r.starts_at.astimezone(CHINA) < wanted.not_after)
            ]
            for offset, limit in ((0, 50), (1, 1), (0, 2), (1, 50), (99, 5)):
                found, total = uow.page_visits(wanted, offset=offset, limit=limit)
                assert found == expected[offset : offset + limit] and total == len(expected), wanted
        assert uow.consultations_of(CASES[0]) == []
        schedules = session.scalars(select(ScheduleRow).order_by(ScheduleRow.leader_id)).all()
        assert uow.schedules() == [schedule_from_row(r) for r in schedules] and len(schedules) == 2
        rooms = [Room(r.room_id, r.node, r.name) for r in session.scalars(select(RoomRow).order_by(RoomRow.room_id))]
        assert uow.rooms("") == rooms == uow.rooms(NODE) and rooms
        assert uow.rooms("510000") == []
    # GetCaseVideo's shared read (``reading_together``: a Core connection, no ORM session built unless
    # a read needs one) answers what a unit of work of its own answers.
    lo, hi = datetime(2026, 10, 12, tzinfo=CHINA), datetime(2026, 11, 12, tzinfo=CHINA)

    def reads(uow: SqlVideoUnitOfWork) -> tuple[object, ...]:
        pages = [uow.page_visits(wanted, offset=0, limit=50) for wanted in shapes]
        return pages, uow.consultations_of(CASES[0]), uow.schedules(), uow.rooms(""), uow.rooms(NODE)

    with store.begin() as own:
        answers = reads(own)
        counts = own.session_counts("leader-1", lo, hi)
    assert counts  # the bookings above counted
    with store.reading_together(), store.begin() as shared:
        assert reads(shared) == answers
        assert shared._session is None
        assert shared.session_counts("leader-1", lo, hi) == counts  # an ORM read, on the same connection
        assert shared._session is not None
