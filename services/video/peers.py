"""The gRPC client that holds rooms (and units) at other nodes' video services: ``handlers.RemoteRooms``
over gRPC, with a deadline on every call."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from datetime import datetime, timedelta

import grpc
from google.protobuf.duration_pb2 import Duration
from lianxin.video.v1 import video_service_pb2 as pb
from lianxin.video.v1 import video_service_pb2_grpc as video_grpc

from services.common.errors import FailedPrecondition, Unavailable
from services.common.grpcclient import instrumented_channel
from services.common.timeutil import from_timestamp, to_timestamp
from services.video.consult import Interval
from services.video.ports import Booking, HoldAnswer

CALL_TIMEOUT_S = 5.0  # every cross-node call has a deadline


class GrpcRemoteRooms:
    """``handlers.RemoteRooms`` over gRPC; ``peers``: node code → host:port (ctx.hooks.video_peers)."""

    def __init__(
        self, node: str, peers: Mapping[str, str], *, credentials: grpc.ChannelCredentials | None = None
    ) -> None:
        self._credentials = credentials  # this node's mTLS client certificate, when TLS is on
        self._node = node
        self._peers = peers
        self._stubs: dict[str, video_grpc.VideoServiceStub] = {}  # by address: a moved peer gets a new channel
        self._lock = threading.Lock()

    def _stub(self, node: str) -> video_grpc.VideoServiceStub:
        address = self._peers.get(node)
        if not address:
            raise Unavailable(f"no address for node {node} (ctx.hooks.video_peers)")
        with self._lock:
            if address not in self._stubs:
                self._stubs[address] = video_grpc.VideoServiceStub(
                    instrumented_channel(address, credentials=self._credentials)
                )
            return self._stubs[address]

    def hold(
        self, node: str, *, hold_id: str, room_id: str, visit: Booking, ttl: timedelta, unit_id: str = ""
    ) -> HoldAnswer:
        request = pb.HoldRoomRequest(
            hold_id=hold_id,
            room_id=room_id,
            requesting_node=self._node,
            visit_id=visit.booking_id,
            case_id=visit.case_id,
            starts_at=to_timestamp(visit.starts_at),
            ends_at=to_timestamp(visit.ends_at),
            ttl=Duration(seconds=int(ttl.total_seconds())),
            unit_id=unit_id,
        )
        try:
            hold = self._stub(node).HoldRoom(request, timeout=CALL_TIMEOUT_S).hold
        except grpc.RpcError as error:
            raise Unavailable(f"HoldRoom at {node}: {error.code()}") from error  # type: ignore[attr-defined]
        return HoldAnswer(hold.state == pb.HOLD_STATE_HELD, hold.reason)

    def free_periods(
        self, node: str, *, unit_id: str, room_id: str, not_before: datetime, not_after: datetime
    ) -> tuple[list[Interval], str]:
        request = pb.ListFreePeriodsRequest(
            unit_id=unit_id, room_id=room_id, not_before=to_timestamp(not_before), not_after=to_timestamp(not_after)
        )
        try:
            reply = self._stub(node).ListFreePeriods(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as error:
            code = error.code()  # type: ignore[attr-defined]
            if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND):
                # The node answered: it does not know the room (or it is not its own).
                raise FailedPrecondition(f"node {node}: {error.details()}", "PARTICIPANT") from error  # type: ignore[attr-defined]
            raise Unavailable(f"ListFreePeriods at {node}: {code}") from error
        periods = [(from_timestamp(p.starts_at), from_timestamp(p.ends_at)) for p in reply.periods]
        return [(a, b) for a, b in periods if a is not None and b is not None], reply.calendar_notice

    def confirm(self, node: str, hold_id: str) -> None:
        try:
            self._stub(node).ConfirmHold(
                pb.ConfirmHoldRequest(hold_id=hold_id, requesting_node=self._node), timeout=CALL_TIMEOUT_S
            )
        except grpc.RpcError as error:
            code = error.code()  # type: ignore[attr-defined]
            if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                # The owning node answered: the hold lapsed or was released; retrying cannot help.
                raise FailedPrecondition(f"ConfirmHold at {node}: {error.details()}", code.name) from error  # type: ignore[attr-defined]
            raise Unavailable(f"ConfirmHold at {node}: {code}") from error

    def release(self, node: str, hold_id: str, reason: str) -> None:
        try:
            self._stub(node).ReleaseHold(
                pb.ReleaseHoldRequest(hold_id=hold_id, requesting_node=self._node, reason=reason),
                timeout=CALL_TIMEOUT_S,
            )
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                return  # the hold never reached that node (the call asking for it failed): nothing to free
            raise Unavailable(f"ReleaseHold at {node}: {error.code()}") from error  # type: ignore[attr-defined]
