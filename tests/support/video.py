"""A video node on a fixed clock, with a leader's schedule published."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from lianxin.video.v1 import video_service_pb2 as pb
from lianxin.video.v1 import video_service_pb2_grpc as video_grpc

from services.common.service import NodeHooks
from services.common.settings import Settings
from services.common.timeutil import CHINA, from_timestamp
from services.node import Node


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def start_node(
    code: str,
    database_url: str | None,
    tmp_path: Path,
    clock: FakeClock,
    peers: dict[str, str],
    *,
    wake_sweeps: bool = True,
) -> Node:
    """``wake_sweeps`` False: a commit does not wake the node's sweep in the background (the test runs
    it itself, so a sweep cannot finish meanwhile what the test means to leave half-done)."""
    settings = Settings(node=code, data_dir=tmp_path / code, database_url=database_url, relay_interval_s=0.05)
    hooks = NodeHooks(video_peers=peers)
    if not wake_sweeps:
        hooks.wake_timer = lambda _name: None
    return Node(settings, clock=clock, services=["video"], hooks=hooks).start()


def setup_leader(
    stub: video_grpc.VideoServiceStub,
    *,
    leader: str = "leader-1",
    node: str = "511102",
    weekly: tuple[tuple[int, str, str], ...] = ((3, "09:00", "12:00"),),
    max_per_session: int = 4,
    one_offs: tuple[pb.OneOffDay, ...] = (),
) -> pb.Schedule:
    stub.RegisterRoom(pb.RegisterRoomRequest(room=pb.Room(room_id=f"{node}-R1", node=node, name="接访室")))
    schedule: pb.Schedule = stub.PublishSchedule(
        pb.PublishScheduleRequest(
            actor="admin",
            schedule=pb.Schedule(
                leader_id=leader,
                node=node,
                weekly_patterns=[pb.WeeklyPattern(weekday=w, start_time=a, end_time=b) for w, a, b in weekly],
                one_off_days=list(one_offs),
                slot_minutes=30,
                buffer_minutes=10,
                max_per_session=max_per_session,
                room_ids=[f"{node}-R1"],
            ),
        )
    ).schedule
    return schedule


def local(ts: object) -> datetime:
    value = from_timestamp(ts)  # type: ignore[arg-type]
    assert value is not None
    return value.astimezone(CHINA)
