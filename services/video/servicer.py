"""VideoService gRPC adapter (translate, call store/handlers, translate back) and the gRPC client
that holds rooms at other nodes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from lianxin.common.v1 import common_pb2
from lianxin.video.v1 import video_service_pb2 as pb
from lianxin.video.v1 import video_service_pb2_grpc as video_grpc

from services.common.casepass import Mac, case_of_pass
from services.common.db import read_only
from services.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.common.grpcserver import instrumented_channel
from services.common.logs import mask_id_number, mask_name
from services.common.security import current_principal
from services.common.timeutil import from_timestamp, to_timestamp
from services.video import consult, handlers
from services.video.consult import Consultation, ConsultationRequest, ConsultationState, Interval, Participant
from services.video.domain import (
    DEFAULT_HORIZON,
    MAX_HORIZON,
    BookRequest,
    Hold,
    HoldState,
    OneOffDay,
    Representative,
    Room,
    Schedule,
    Visit,
    WeeklyPattern,
    check_citizen_cancel,
    check_citizen_start,
    citizen_may_cancel,
    clamp_ttl,
    parse_hhmm,
    validate_representatives,
)
from services.video.handlers import Booking, HoldAnswer
from services.video.store import VideoStore

CALL_TIMEOUT_S = 5.0  # every cross-node call has a deadline
_VISIT_STATES = {
    s: getattr(pb, f"VISIT_STATE_{s}") for s in ("HOLDING", "BOOKED", "CHECKED_IN", "COMPLETED", "CANCELLED", "NO_SHOW")
}
_HOLD_STATES = {s: getattr(pb, f"HOLD_STATE_{s}") for s in ("HELD", "CONFIRMED", "RELEASED", "EXPIRED", "REFUSED")}


class GrpcRemoteRooms:
    """``handlers.RemoteRooms`` over gRPC; ``peers``: node code → host:port (ctx.extras["video_peers"])."""

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
            raise Unavailable(f"no address for node {node} (ctx.extras['video_peers'])")
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


def _time(ts: Any, field: str, *, required: bool = False) -> datetime | None:
    value = from_timestamp(ts, field)
    if required and value is None:
        raise InvalidArgument(field, "must be set")
    return value


def _window(request: Any, now: datetime) -> tuple[datetime, datetime]:
    not_before = _time(request.not_before, "not_before") or now
    not_after = _time(request.not_after, "not_after") or not_before + DEFAULT_HORIZON
    if not_after < not_before:
        raise InvalidArgument("not_after", "must not be before not_before")
    if not_after - not_before > MAX_HORIZON:
        raise InvalidArgument("not_after", f"window longer than {MAX_HORIZON.days} days")
    return not_before, not_after


def visit_message(v: Visit) -> pb.Visit:
    # Representatives leave the service masked: the clerk saw them at the desk; replies are logged.
    return pb.Visit(
        visit_id=v.visit_id,
        case_id=v.case_id,
        leader_id=v.leader_id,
        room_ids=v.room_ids,
        unit_ids=v.unit_ids,
        starts_at=to_timestamp(v.starts_at),
        ends_at=to_timestamp(v.ends_at),
        state=_VISIT_STATES[v.state.value],
        version=v.version,
        representatives=[
            common_pb2.Person(name=mask_name(r.name), id_number=mask_id_number(r.id_number)) for r in v.representatives
        ],
        checked_in_at=to_timestamp(v.checked_in_at) if v.checked_in_at else None,
        minutes=v.minutes,
        decisions=v.decisions,
        recording_ref=v.recording_ref,
        hold_ids=v.hold_ids,
    )


_CONSULTATION_STATES = {s: getattr(pb, f"CONSULTATION_STATE_{s.value}") for s in ConsultationState}


def consultation_message(c: Consultation, *, minutes_visible: bool = True) -> pb.Consultation:
    return pb.Consultation(
        consultation_id=c.consultation_id,
        case_id=c.case_id,
        host_node=c.host_node,
        topic=c.topic,
        participants=[
            pb.ConsultationParticipant(node=p.node, unit_id=p.unit_id, room_id=p.room_id) for p in c.participants
        ],
        starts_at=to_timestamp(c.starts_at),
        ends_at=to_timestamp(c.ends_at),
        state=_CONSULTATION_STATES[c.state],
        version=c.version,
        minutes=c.minutes if minutes_visible else "",
        minutes_withheld=bool(c.minutes) and not minutes_visible,
        booked_by=c.booked_by,
        held_at=to_timestamp(c.held_at) if c.held_at else None,
        hold_ids=c.hold_ids,
        replica=c.replica,
        cancel_reason=c.cancel_reason,
    )


def _caller() -> tuple[frozenset[str], str, str] | None:
    """(roles, unit, node) of the operator calling; None for full access (tokens off, another node)."""
    principal = current_principal()
    if principal is None or principal.kind != "operator":
        return None
    return principal.roles, principal.unit, principal.node


def _check_may_act(participants: list[Participant]) -> None:
    caller = _caller()
    if caller is not None:
        consult.check_may_act(*caller, participants)


def _minutes_visible(c: Consultation) -> bool:
    caller = _caller()
    return caller is None or consult.may_read_minutes(*caller, c.participants)


def hold_message(h: Hold) -> pb.Hold:
    return pb.Hold(
        hold_id=h.hold_id,
        room_id=h.room_id,
        requesting_node=h.requesting_node,
        visit_id=h.visit_id,
        case_id=h.case_id,
        starts_at=to_timestamp(h.starts_at),
        ends_at=to_timestamp(h.ends_at),
        expires_at=to_timestamp(h.expires_at),
        state=_HOLD_STATES[h.state.value],
        reason=h.reason,
    )


def schedule_message(s: Schedule) -> pb.Schedule:
    return pb.Schedule(
        schedule_id=s.schedule_id,
        leader_id=s.leader_id,
        node=s.node,
        weekly_patterns=[
            pb.WeeklyPattern(weekday=p.weekday, start_time=f"{p.start:%H:%M}", end_time=f"{p.end:%H:%M}")
            for p in s.weekly
        ],
        one_off_days=[
            pb.OneOffDay(
                date=d.day.isoformat(),
                start_time=f"{d.start:%H:%M}" if d.start else "",
                end_time=f"{d.end:%H:%M}" if d.end else "",
                closed=d.closed,
            )
            for d in s.one_offs
        ],
        slot_minutes=s.slot_minutes,
        buffer_minutes=s.buffer_minutes,
        max_per_session=s.max_per_session,
        room_ids=s.room_ids,
        version=s.version,
        leader_name=s.leader_name,
    )


def schedule_from(msg: pb.Schedule) -> Schedule:
    from datetime import date

    one_offs = []
    for i, d in enumerate(msg.one_off_days):
        try:
            day = date.fromisoformat(d.date)
        except ValueError:
            raise InvalidArgument(f"schedule.one_off_days[{i}].date", f"must be YYYY-MM-DD, got {d.date!r}") from None
        start = None if d.closed else parse_hhmm(d.start_time, f"schedule.one_off_days[{i}].start_time")
        end = None if d.closed else parse_hhmm(d.end_time, f"schedule.one_off_days[{i}].end_time")
        one_offs.append(OneOffDay(day, start, end, d.closed))
    return Schedule(
        schedule_id=msg.schedule_id,
        leader_id=msg.leader_id,
        node=msg.node,
        weekly=tuple(
            WeeklyPattern(
                p.weekday,
                parse_hhmm(p.start_time, f"schedule.weekly_patterns[{i}].start_time"),
                parse_hhmm(p.end_time, f"schedule.weekly_patterns[{i}].end_time"),
            )
            for i, p in enumerate(msg.weekly_patterns)
        ),
        one_offs=tuple(one_offs),
        slot_minutes=msg.slot_minutes,
        buffer_minutes=msg.buffer_minutes,
        max_per_session=msg.max_per_session,
        room_ids=tuple(msg.room_ids),
        leader_name=msg.leader_name.strip(),
    )


class VideoServicer(video_grpc.VideoServiceServicer):
    """Domain errors raised here become status codes in the server's one interceptor."""

    def __init__(
        self,
        store: VideoStore,
        remote: handlers.RemoteRooms,
        *,
        hold_ttl: timedelta,
        after_commit: Callable[[], None] = lambda: None,
        case_mac: Mac | None = None,
    ) -> None:
        self._store = store
        self._remote = remote
        self._ttl = hold_ttl
        self._after_commit = after_commit
        self._case_mac = case_mac  # checks citizens' case passes (the node's keyring, as intake's)

    def RegisterRoom(self, request: pb.RegisterRoomRequest, context: Any) -> pb.RegisterRoomResponse:
        r = self._store.register_room(Room(request.room.room_id, request.room.node, request.room.name))
        return pb.RegisterRoomResponse(room=pb.Room(room_id=r.room_id, node=r.node, name=r.name))

    def PublishSchedule(self, request: pb.PublishScheduleRequest, context: Any) -> pb.PublishScheduleResponse:
        stored = self._store.publish_schedule(schedule_from(request.schedule), request.expected_version)
        return pb.PublishScheduleResponse(schedule=schedule_message(stored))

    def _book_request(self, request: Any) -> BookRequest:
        if not request.leader_id:
            raise InvalidArgument("leader_id", "must be set")
        not_before, not_after = _window(request, self._store.now())
        starts_at = _time(request.starts_at, "starts_at") if hasattr(request, "starts_at") else None
        return BookRequest(
            case_id=getattr(request, "case_id", ""),
            leader_id=request.leader_id,
            room_ids=tuple(dict.fromkeys(request.room_ids)),
            unit_ids=tuple(dict.fromkeys(request.unit_ids)),
            not_before=not_before,
            not_after=not_after,
            starts_at=starts_at,
        )

    @read_only
    def ListSlots(self, request: pb.ListSlotsRequest, context: Any) -> pb.ListSlotsResponse:
        limit = request.max_items if 0 < request.max_items <= 500 else 20
        wanted = self._book_request(request)
        found = self._store.list_slots(wanted, limit)
        return pb.ListSlotsResponse(
            calendar_notice=self._store.calendar_notice(wanted),
            slots=[
                pb.Slot(
                    leader_id=request.leader_id,
                    starts_at=to_timestamp(s.starts_at),
                    ends_at=to_timestamp(s.ends_at),
                    room_ids=s.room_ids,
                    remaining_in_session=s.remaining,
                )
                for s in found
            ],
        )

    def BookVisit(self, request: pb.BookVisitRequest, context: Any) -> pb.BookVisitResponse:
        if not request.case_id:
            raise InvalidArgument("case_id", "must be set")
        visit = handlers.book_visit(self._store, self._remote, self._book_request(request), self._ttl)
        self._after_commit()
        return pb.BookVisitResponse(visit=visit_message(visit))

    def RescheduleVisit(self, request: pb.RescheduleVisitRequest, context: Any) -> pb.RescheduleVisitResponse:
        current = self._store.get_visit(request.visit_id)
        not_before, not_after = _window(request, self._store.now())
        req = BookRequest(
            current.case_id,
            current.leader_id,
            (),
            (),
            not_before,
            not_after,
            _time(request.starts_at, "starts_at"),
        )
        visit = handlers.reschedule_visit(
            self._store, self._remote, request.visit_id, request.expected_version, req, self._ttl
        )
        self._after_commit()
        return pb.RescheduleVisitResponse(visit=visit_message(visit))

    def CancelVisit(self, request: pb.CancelVisitRequest, context: Any) -> pb.CancelVisitResponse:
        visit = handlers.cancel_visit(
            self._store, self._remote, request.visit_id, request.expected_version, request.reason
        )
        self._after_commit()
        return pb.CancelVisitResponse(visit=visit_message(visit))

    def CheckIn(self, request: pb.CheckInRequest, context: Any) -> pb.CheckInResponse:
        reps = validate_representatives([Representative(p.name, p.id_number, p.phone) for p in request.representatives])
        visit = self._store.check_in(request.visit_id, request.expected_version, reps)
        return pb.CheckInResponse(visit=visit_message(visit))

    def RecordOutcome(self, request: pb.RecordOutcomeRequest, context: Any) -> pb.RecordOutcomeResponse:
        if not (request.minutes.strip() or request.decisions.strip()):
            raise InvalidArgument("minutes", "give the minutes or the decisions")
        visit = self._store.record_outcome(
            request.visit_id,
            request.expected_version,
            request.minutes,
            request.decisions,
            request.recording_ref,
        )
        self._after_commit()
        return pb.RecordOutcomeResponse(visit=visit_message(visit))

    @read_only
    def ListVisits(self, request: pb.ListVisitsRequest, context: Any) -> pb.ListVisitsResponse:
        if not (request.leader_id or request.room_id or request.case_id):
            raise InvalidArgument("leader_id", "give leader_id, room_id or case_id")
        size = request.page.page_size if 0 < request.page.page_size <= 500 else 50
        offset = int(request.page.page_token) if request.page.page_token.isdigit() else 0
        visits, total = self._store.list_visits(
            leader_id=request.leader_id,
            room_id=request.room_id,
            case_id=request.case_id,
            not_before=_time(request.not_before, "not_before"),
            not_after=_time(request.not_after, "not_after"),
            offset=offset,
            limit=size,
        )
        # total -1: more than the count reads; a full page then has a next one.
        more = len(visits) == size if total < 0 else offset + size < total
        nxt = str(offset + size) if more else ""
        return pb.ListVisitsResponse(
            visits=[visit_message(v) for v in visits],
            page=common_pb2.PageResponse(next_page_token=nxt, total_size=total),
        )

    def HoldRoom(self, request: pb.HoldRoomRequest, context: Any) -> pb.HoldRoomResponse:
        for name in ("hold_id", "room_id", "requesting_node"):
            if not getattr(request, name):
                raise InvalidArgument(name, "must be set")
        starts = _time(request.starts_at, "starts_at", required=True)
        ends = _time(request.ends_at, "ends_at", required=True)
        assert starts is not None and ends is not None
        if ends <= starts:
            raise InvalidArgument("ends_at", "must be after starts_at")
        ttl = clamp_ttl(request.ttl.ToTimedelta() if request.HasField("ttl") else None)
        hold = Hold(
            request.hold_id,
            request.room_id,
            request.requesting_node,
            request.visit_id,
            request.case_id,
            starts,
            ends,
            self._store.now() + ttl,
            HoldState.HELD,
        )
        return pb.HoldRoomResponse(hold=hold_message(self._store.hold_room(hold, request.unit_id.strip())))

    def ConfirmHold(self, request: pb.ConfirmHoldRequest, context: Any) -> pb.ConfirmHoldResponse:
        return pb.ConfirmHoldResponse(
            hold=hold_message(self._store.confirm_hold(request.hold_id, request.requesting_node))
        )

    def ReleaseHold(self, request: pb.ReleaseHoldRequest, context: Any) -> pb.ReleaseHoldResponse:
        hold = self._store.release_hold(request.hold_id, request.requesting_node, request.reason)
        return pb.ReleaseHoldResponse(hold=hold_message(hold))

    # -- citizens (public methods: a case pass from TrackCase instead of an operator token) --------

    def _case_of(self, case_pass: str) -> str:
        if self._case_mac is None:
            raise FailedPrecondition("this video process cannot check case passes (no data keyring)")
        return case_of_pass(self._case_mac, case_pass)

    def _citizen_visit(self, v: Visit, names: Mapping[str, str]) -> pb.CitizenVisit:
        return pb.CitizenVisit(
            visit_id=v.visit_id,
            leader_id=v.leader_id,
            leader_name=names.get(v.leader_id) or v.leader_id,
            starts_at=to_timestamp(v.starts_at),
            ends_at=to_timestamp(v.ends_at),
            state=_VISIT_STATES[v.state.value],
            can_cancel=citizen_may_cancel(v, self._store.now()),
        )

    def _leader_names(self) -> dict[str, str]:
        return {s.leader_id: s.leader_name for s in self._store.schedules()}

    @read_only
    def ListReceivingLeaders(
        self, request: pb.ListReceivingLeadersRequest, context: Any
    ) -> pb.ListReceivingLeadersResponse:
        limit = request.max_items if 0 < request.max_items <= 100 else 50
        now = self._store.now()
        leaders, notice = [], ""
        for schedule in self._store.schedules()[:limit]:
            wanted = BookRequest("", schedule.leader_id, (), (), now, now + DEFAULT_HORIZON, None)
            found = self._store.list_slots(wanted, 1)
            notice = notice or self._store.calendar_notice(wanted)
            leaders.append(
                pb.ReceivingLeader(
                    leader_id=schedule.leader_id,
                    leader_name=schedule.leader_name or schedule.leader_id,
                    node=schedule.node,
                    next_free_at=to_timestamp(found[0].starts_at) if found else None,
                )
            )
        return pb.ListReceivingLeadersResponse(leaders=leaders, calendar_notice=notice)

    def BookCitizenVisit(self, request: pb.BookCitizenVisitRequest, context: Any) -> pb.BookCitizenVisitResponse:
        if not request.leader_id.strip():
            raise InvalidArgument("leader_id", "must be set: choose a leader")
        now = self._store.now()
        starts_at = check_citizen_start(_time(request.starts_at, "starts_at"), now)
        case_id = self._case_of(request.case_pass)
        wanted = BookRequest(case_id, request.leader_id, (), (), starts_at, starts_at, starts_at, one_per_case=True)
        visit = handlers.book_visit(self._store, self._remote, wanted, self._ttl)
        self._after_commit()
        return pb.BookCitizenVisitResponse(visit=self._citizen_visit(visit, self._leader_names()))

    def ListCitizenVisits(self, request: pb.ListCitizenVisitsRequest, context: Any) -> pb.ListCitizenVisitsResponse:
        case_id = self._case_of(request.case_pass)
        visits, _total = self._store.list_visits(
            leader_id="", room_id="", case_id=case_id, not_before=None, not_after=None, offset=0, limit=50
        )
        names = self._leader_names()
        return pb.ListCitizenVisitsResponse(visits=[self._citizen_visit(v, names) for v in visits])

    def CancelCitizenVisit(self, request: pb.CancelCitizenVisitRequest, context: Any) -> pb.CancelCitizenVisitResponse:
        if not request.visit_id.strip():
            raise InvalidArgument("visit_id", "must be set")
        case_id = self._case_of(request.case_pass)
        visit = self._store.get_visit(request.visit_id)
        check_citizen_cancel(visit, case_id, self._store.now())
        reason = "cancelled by the citizen" + (f": {request.reason.strip()}" if request.reason.strip() else "")
        cancelled = handlers.cancel_visit(self._store, self._remote, visit.visit_id, visit.version, reason)
        self._after_commit()
        return pb.CancelCitizenVisitResponse(visit=self._citizen_visit(cancelled, self._leader_names()))

    # -- remote consultations (远程会商) ------------------------------------------------------------

    def ListRooms(self, request: pb.ListRoomsRequest, context: Any) -> pb.ListRoomsResponse:
        rooms = self._store.list_rooms(request.node.strip())
        return pb.ListRoomsResponse(rooms=[pb.Room(room_id=r.room_id, node=r.node, name=r.name) for r in rooms])

    def ListFreePeriods(self, request: pb.ListFreePeriodsRequest, context: Any) -> pb.ListFreePeriodsResponse:
        for name in ("unit_id", "room_id"):
            if not getattr(request, name).strip():
                raise InvalidArgument(name, "must be set")
        lo = _time(request.not_before, "not_before", required=True)
        hi = _time(request.not_after, "not_after", required=True)
        assert lo is not None and hi is not None
        if hi <= lo:
            raise InvalidArgument("not_after", "must be after not_before")
        if hi - lo > consult.MAX_FREE_WINDOW:
            raise InvalidArgument("not_after", f"the window may span at most {consult.MAX_FREE_WINDOW.days} days")
        periods = self._store.free_periods(request.unit_id.strip(), request.room_id.strip(), lo, hi)
        return pb.ListFreePeriodsResponse(
            periods=[pb.FreePeriod(starts_at=to_timestamp(a), ends_at=to_timestamp(b)) for a, b in periods],
            calendar_notice=handlers.calendar_notice(self._store.calendar_end(), hi, self._store.node),
        )

    def _consultation_request(self, request: Any, *, case_id: str = "", topic: str = "") -> ConsultationRequest:
        participants = consult.check_participants(
            [Participant(p.node, p.unit_id, p.room_id) for p in request.participants], self._store.node
        )
        duration = consult.check_duration(request.duration_minutes)
        starts_at = _time(request.starts_at, "starts_at") if hasattr(request, "starts_at") else None
        lo, hi = consult.check_window(
            _time(request.not_before, "not_before"), _time(request.not_after, "not_after"), self._store.now(), starts_at
        )
        self._store.check_rooms(participants)
        actor = getattr(request, "actor", "")
        return ConsultationRequest(case_id, actor, topic, participants, duration, lo, hi, starts_at)

    def ListConsultationSlots(
        self, request: pb.ListConsultationSlotsRequest, context: Any
    ) -> pb.ListConsultationSlotsResponse:
        limit = request.max_items if 0 < request.max_items <= 20 else 3
        wanted = self._consultation_request(request)
        found, notice = handlers.consultation_slots(self._store, self._remote, wanted, limit=limit)
        return pb.ListConsultationSlotsResponse(
            slots=[pb.FreePeriod(starts_at=to_timestamp(a), ends_at=to_timestamp(b)) for a, b in found],
            calendar_notice=notice,
        )

    def BookConsultation(self, request: pb.BookConsultationRequest, context: Any) -> pb.BookConsultationResponse:
        if not request.case_id.strip():
            raise InvalidArgument("case_id", "must be set")
        topic = consult.check_topic(request.topic)
        wanted = self._consultation_request(request, case_id=request.case_id.strip(), topic=topic)
        _check_may_act(list(wanted.participants))
        booked = handlers.book_consultation(self._store, self._remote, wanted, self._ttl)
        self._after_commit()
        return pb.BookConsultationResponse(consultation=consultation_message(booked))

    def _own_consultation(self, consultation_id: str) -> Consultation:
        if not consultation_id.strip():
            raise InvalidArgument("consultation_id", "must be set")
        found = self._store.get_consultation(consultation_id.strip())
        _check_may_act(found.participants)
        return found

    def RecordConsultationMinutes(
        self, request: pb.RecordConsultationMinutesRequest, context: Any
    ) -> pb.RecordConsultationMinutesResponse:
        minutes = consult.check_minutes(request.minutes)
        found = self._own_consultation(request.consultation_id)
        held = self._store.record_consultation_minutes(found.consultation_id, request.expected_version, minutes)
        self._after_commit()
        return pb.RecordConsultationMinutesResponse(consultation=consultation_message(held))

    def CancelConsultation(self, request: pb.CancelConsultationRequest, context: Any) -> pb.CancelConsultationResponse:
        found = self._own_consultation(request.consultation_id)
        reason = request.reason.strip() or "cancelled"
        cancelled = handlers.cancel_consultation(
            self._store, self._remote, found.consultation_id, request.expected_version, reason
        )
        self._after_commit()
        return pb.CancelConsultationResponse(consultation=consultation_message(cancelled))

    def ListConsultations(self, request: pb.ListConsultationsRequest, context: Any) -> pb.ListConsultationsResponse:
        if not request.case_id.strip():
            raise InvalidArgument("case_id", "must be set")
        found = self._store.consultations_of(request.case_id.strip())
        return pb.ListConsultationsResponse(
            consultations=[consultation_message(c, minutes_visible=_minutes_visible(c)) for c in found]
        )
