"""VideoService gRPC adapter: translate the request, call the use case, translate the reply."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from lianxin.common.v1 import common_pb2
from lianxin.video.v1 import video_service_pb2 as pb
from lianxin.video.v1 import video_service_pb2_grpc as video_grpc

from services.common.casepass import Mac, case_of_pass
from services.common.db import read_only
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.security import current_principal
from services.common.timeutil import to_timestamp
from services.video import consult, handlers, mapping
from services.video.consult import Consultation, ConsultationRequest, Participant
from services.video.domain import (
    DEFAULT_HORIZON,
    BookRequest,
    Hold,
    HoldState,
    Representative,
    Room,
    Visit,
    check_citizen_cancel,
    check_citizen_start,
    citizen_may_cancel,
    clamp_ttl,
    validate_representatives,
)
from services.video.mapping import consultation_message, hold_message, schedule_from, schedule_message, visit_message
from services.video.ports import VideoStorage, VisitFilter


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


class VideoServicer(video_grpc.VideoServiceServicer):
    """Domain errors raised here become status codes in the server's one interceptor."""

    def __init__(
        self,
        video: VideoStorage,
        remote: handlers.RemoteRooms,
        *,
        hold_ttl: timedelta,
        after_commit: Callable[[], None] = lambda: None,
        case_mac: Mac | None = None,
    ) -> None:
        self._video = video
        self._remote = remote
        self._ttl = hold_ttl
        self._after_commit = after_commit
        self._case_mac = case_mac  # checks citizens' case passes (the node's keyring, as intake's)

    def RegisterRoom(self, request: pb.RegisterRoomRequest, context: Any) -> pb.RegisterRoomResponse:
        r = handlers.register_room(self._video, Room(request.room.room_id, request.room.node, request.room.name))
        return pb.RegisterRoomResponse(room=mapping.room_message(r))

    def PublishSchedule(self, request: pb.PublishScheduleRequest, context: Any) -> pb.PublishScheduleResponse:
        stored = handlers.publish_schedule(self._video, schedule_from(request.schedule), request.expected_version)
        return pb.PublishScheduleResponse(schedule=schedule_message(stored))

    def _book_request(self, request: Any) -> BookRequest:
        if not request.leader_id:
            raise InvalidArgument("leader_id", "must be set")
        not_before, not_after = mapping.window(request, self._video.now())
        starts_at = mapping.time_field(request.starts_at, "starts_at") if hasattr(request, "starts_at") else None
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
        found = handlers.list_slots(self._video, wanted, limit)
        return pb.ListSlotsResponse(
            calendar_notice=handlers.slots_calendar_notice(self._video, wanted),
            slots=[mapping.slot_message(request.leader_id, s) for s in found],
        )

    def BookVisit(self, request: pb.BookVisitRequest, context: Any) -> pb.BookVisitResponse:
        if not request.case_id:
            raise InvalidArgument("case_id", "must be set")
        visit = handlers.book_visit(self._video, self._remote, self._book_request(request), self._ttl)
        self._after_commit()
        return pb.BookVisitResponse(visit=visit_message(visit))

    def RescheduleVisit(self, request: pb.RescheduleVisitRequest, context: Any) -> pb.RescheduleVisitResponse:
        current = handlers.get_visit(self._video, request.visit_id)
        not_before, not_after = mapping.window(request, self._video.now())
        req = BookRequest(
            current.case_id,
            current.leader_id,
            (),
            (),
            not_before,
            not_after,
            mapping.time_field(request.starts_at, "starts_at"),
        )
        visit = handlers.reschedule_visit(
            self._video, self._remote, request.visit_id, request.expected_version, req, self._ttl
        )
        self._after_commit()
        return pb.RescheduleVisitResponse(visit=visit_message(visit))

    def CancelVisit(self, request: pb.CancelVisitRequest, context: Any) -> pb.CancelVisitResponse:
        visit = handlers.cancel_visit(
            self._video, self._remote, request.visit_id, request.expected_version, request.reason
        )
        self._after_commit()
        return pb.CancelVisitResponse(visit=visit_message(visit))

    def CheckIn(self, request: pb.CheckInRequest, context: Any) -> pb.CheckInResponse:
        reps = validate_representatives([Representative(p.name, p.id_number, p.phone) for p in request.representatives])
        visit = handlers.check_in(self._video, request.visit_id, request.expected_version, reps)
        return pb.CheckInResponse(visit=visit_message(visit))

    def RecordOutcome(self, request: pb.RecordOutcomeRequest, context: Any) -> pb.RecordOutcomeResponse:
        if not (request.minutes.strip() or request.decisions.strip()):
            raise InvalidArgument("minutes", "give the minutes or the decisions")
        visit = handlers.record_outcome(
            self._video,
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
        wanted = VisitFilter(
            leader_id=request.leader_id,
            room_id=request.room_id,
            case_id=request.case_id,
            not_before=mapping.time_field(request.not_before, "not_before"),
            not_after=mapping.time_field(request.not_after, "not_after"),
        )
        visits, total = handlers.list_visits(self._video, wanted, offset=offset, limit=size)
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
        starts = mapping.time_field(request.starts_at, "starts_at", required=True)
        ends = mapping.time_field(request.ends_at, "ends_at", required=True)
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
            self._video.now() + ttl,
            HoldState.HELD,
        )
        return pb.HoldRoomResponse(hold=hold_message(handlers.hold_room(self._video, hold, request.unit_id.strip())))

    def ConfirmHold(self, request: pb.ConfirmHoldRequest, context: Any) -> pb.ConfirmHoldResponse:
        return pb.ConfirmHoldResponse(
            hold=hold_message(handlers.confirm_hold(self._video, request.hold_id, request.requesting_node))
        )

    def ReleaseHold(self, request: pb.ReleaseHoldRequest, context: Any) -> pb.ReleaseHoldResponse:
        hold = handlers.release_hold(self._video, request.hold_id, request.requesting_node, request.reason)
        return pb.ReleaseHoldResponse(hold=hold_message(hold))

    # -- citizens (public methods: a case pass from TrackCase instead of an operator token) --------

    def _case_of(self, case_pass: str) -> str:
        if self._case_mac is None:
            raise FailedPrecondition("this video process cannot check case passes (no data keyring)")
        return case_of_pass(self._case_mac, case_pass)

    def _citizen_visit(self, v: Visit, names: Mapping[str, str]) -> pb.CitizenVisit:
        return mapping.citizen_visit_message(v, names, can_cancel=citizen_may_cancel(v, self._video.now()))

    def _leader_names(self) -> dict[str, str]:
        return {s.leader_id: s.leader_name for s in handlers.schedules(self._video)}

    @read_only
    def ListReceivingLeaders(
        self, request: pb.ListReceivingLeadersRequest, context: Any
    ) -> pb.ListReceivingLeadersResponse:
        limit = request.max_items if 0 < request.max_items <= 100 else 50
        now = self._video.now()
        leaders, notice = [], ""
        for schedule in handlers.schedules(self._video)[:limit]:
            free_at, leader_notice = handlers.next_free_at(self._video, schedule.leader_id, now, DEFAULT_HORIZON)
            notice = notice or leader_notice
            leaders.append(
                pb.ReceivingLeader(
                    leader_id=schedule.leader_id,
                    leader_name=schedule.leader_name or schedule.leader_id,
                    node=schedule.node,
                    next_free_at=to_timestamp(free_at) if free_at else None,
                )
            )
        return pb.ListReceivingLeadersResponse(leaders=leaders, calendar_notice=notice)

    def BookCitizenVisit(self, request: pb.BookCitizenVisitRequest, context: Any) -> pb.BookCitizenVisitResponse:
        if not request.leader_id.strip():
            raise InvalidArgument("leader_id", "must be set: choose a leader")
        now = self._video.now()
        starts_at = check_citizen_start(mapping.time_field(request.starts_at, "starts_at"), now)
        case_id = self._case_of(request.case_pass)
        wanted = BookRequest(case_id, request.leader_id, (), (), starts_at, starts_at, starts_at, one_per_case=True)
        visit = handlers.book_visit(self._video, self._remote, wanted, self._ttl)
        self._after_commit()
        return pb.BookCitizenVisitResponse(visit=self._citizen_visit(visit, self._leader_names()))

    def ListCitizenVisits(self, request: pb.ListCitizenVisitsRequest, context: Any) -> pb.ListCitizenVisitsResponse:
        case_id = self._case_of(request.case_pass)
        visits, _total = handlers.list_visits(self._video, VisitFilter(case_id=case_id), offset=0, limit=50)
        names = self._leader_names()
        return pb.ListCitizenVisitsResponse(visits=[self._citizen_visit(v, names) for v in visits])

    def CancelCitizenVisit(self, request: pb.CancelCitizenVisitRequest, context: Any) -> pb.CancelCitizenVisitResponse:
        if not request.visit_id.strip():
            raise InvalidArgument("visit_id", "must be set")
        case_id = self._case_of(request.case_pass)
        visit = handlers.get_visit(self._video, request.visit_id)
        check_citizen_cancel(visit, case_id, self._video.now())
        reason = "cancelled by the citizen" + (f": {request.reason.strip()}" if request.reason.strip() else "")
        cancelled = handlers.cancel_visit(self._video, self._remote, visit.visit_id, visit.version, reason)
        self._after_commit()
        return pb.CancelCitizenVisitResponse(visit=self._citizen_visit(cancelled, self._leader_names()))

    # -- remote consultations (远程会商) ------------------------------------------------------------

    def ListRooms(self, request: pb.ListRoomsRequest, context: Any) -> pb.ListRoomsResponse:
        rooms = handlers.list_rooms(self._video, request.node.strip())
        return pb.ListRoomsResponse(rooms=[mapping.room_message(r) for r in rooms])

    def ListFreePeriods(self, request: pb.ListFreePeriodsRequest, context: Any) -> pb.ListFreePeriodsResponse:
        for name in ("unit_id", "room_id"):
            if not getattr(request, name).strip():
                raise InvalidArgument(name, "must be set")
        lo = mapping.time_field(request.not_before, "not_before", required=True)
        hi = mapping.time_field(request.not_after, "not_after", required=True)
        assert lo is not None and hi is not None
        if hi <= lo:
            raise InvalidArgument("not_after", "must be after not_before")
        if hi - lo > consult.MAX_FREE_WINDOW:
            raise InvalidArgument("not_after", f"the window may span at most {consult.MAX_FREE_WINDOW.days} days")
        periods = handlers.free_periods(self._video, request.unit_id.strip(), request.room_id.strip(), lo, hi)
        return pb.ListFreePeriodsResponse(
            periods=[mapping.period_message(p) for p in periods],
            calendar_notice=handlers.calendar_notice(self._video.calendar.known_range()[1], hi, self._video.node),
        )

    def _consultation_request(self, request: Any, *, case_id: str = "", topic: str = "") -> ConsultationRequest:
        participants = consult.check_participants(
            [Participant(p.node, p.unit_id, p.room_id) for p in request.participants], self._video.node
        )
        duration = consult.check_duration(request.duration_minutes)
        starts_at = mapping.time_field(request.starts_at, "starts_at") if hasattr(request, "starts_at") else None
        lo, hi = consult.check_window(
            mapping.time_field(request.not_before, "not_before"),
            mapping.time_field(request.not_after, "not_after"),
            self._video.now(),
            starts_at,
        )
        handlers.check_rooms(self._video, participants)
        actor = getattr(request, "actor", "")
        return ConsultationRequest(case_id, actor, topic, participants, duration, lo, hi, starts_at)

    def ListConsultationSlots(
        self, request: pb.ListConsultationSlotsRequest, context: Any
    ) -> pb.ListConsultationSlotsResponse:
        limit = request.max_items if 0 < request.max_items <= 20 else 3
        wanted = self._consultation_request(request)
        found, notice = handlers.consultation_slots(self._video, self._remote, wanted, limit=limit)
        return pb.ListConsultationSlotsResponse(
            slots=[mapping.period_message(p) for p in found],
            calendar_notice=notice,
        )

    def BookConsultation(self, request: pb.BookConsultationRequest, context: Any) -> pb.BookConsultationResponse:
        if not request.case_id.strip():
            raise InvalidArgument("case_id", "must be set")
        topic = consult.check_topic(request.topic)
        wanted = self._consultation_request(request, case_id=request.case_id.strip(), topic=topic)
        _check_may_act(list(wanted.participants))
        booked = handlers.book_consultation(self._video, self._remote, wanted, self._ttl)
        self._after_commit()
        return pb.BookConsultationResponse(consultation=consultation_message(booked))

    def _own_consultation(self, consultation_id: str) -> Consultation:
        if not consultation_id.strip():
            raise InvalidArgument("consultation_id", "must be set")
        found = handlers.get_consultation(self._video, consultation_id.strip())
        _check_may_act(found.participants)
        return found

    def RecordConsultationMinutes(
        self, request: pb.RecordConsultationMinutesRequest, context: Any
    ) -> pb.RecordConsultationMinutesResponse:
        minutes = consult.check_minutes(request.minutes)
        found = self._own_consultation(request.consultation_id)
        held = handlers.record_consultation_minutes(
            self._video, found.consultation_id, request.expected_version, minutes
        )
        self._after_commit()
        return pb.RecordConsultationMinutesResponse(consultation=consultation_message(held))

    def CancelConsultation(self, request: pb.CancelConsultationRequest, context: Any) -> pb.CancelConsultationResponse:
        found = self._own_consultation(request.consultation_id)
        reason = request.reason.strip() or "cancelled"
        cancelled = handlers.cancel_consultation(
            self._video, self._remote, found.consultation_id, request.expected_version, reason
        )
        self._after_commit()
        return pb.CancelConsultationResponse(consultation=consultation_message(cancelled))

    def RescheduleConsultation(
        self, request: pb.RescheduleConsultationRequest, context: Any
    ) -> pb.RescheduleConsultationResponse:
        found = self._own_consultation(request.consultation_id)
        starts_at = mapping.time_field(request.starts_at, "starts_at")
        window = consult.check_window(
            mapping.time_field(request.not_before, "not_before"),
            mapping.time_field(request.not_after, "not_after"),
            self._video.now(),
            starts_at,
        )
        moved = handlers.reschedule_consultation(
            self._video, self._remote, found.consultation_id, request.expected_version, (*window, starts_at), self._ttl
        )
        self._after_commit()
        return pb.RescheduleConsultationResponse(consultation=consultation_message(moved))

    def ListConsultations(self, request: pb.ListConsultationsRequest, context: Any) -> pb.ListConsultationsResponse:
        if not request.case_id.strip():
            raise InvalidArgument("case_id", "must be set")
        found = handlers.consultations_of(self._video, request.case_id.strip())
        return pb.ListConsultationsResponse(
            consultations=[consultation_message(c, minutes_visible=_minutes_visible(c)) for c in found]
        )

    @read_only  # one plain read on SQLite, not BEGIN IMMEDIATE's write lock (ListConsultations is not marked)
    def GetCaseVideo(self, request: pb.GetCaseVideoRequest, context: Any) -> pb.GetCaseVideoResponse:
        # A case page's four video calls in one (issue 17: each call cost the node ~0.6 ms of gRPC alone);
        # each part is answered by its own method, so it reads exactly as that method would.
        case_id = request.case_id.strip()
        if not case_id:
            raise InvalidArgument("case_id", "must be set")
        with self._video.reading_together():  # one read transaction for the four (not four BEGINs)
            visits = self.ListVisits(pb.ListVisitsRequest(case_id=case_id), context).visits
            consultations = self.ListConsultations(pb.ListConsultationsRequest(case_id=case_id), context).consultations
            leaders = (
                self.ListReceivingLeaders(pb.ListReceivingLeadersRequest(), context).leaders
                if request.with_leaders
                else []
            )
            rooms = self.ListRooms(pb.ListRoomsRequest(), context).rooms if request.with_rooms else []
        return pb.GetCaseVideoResponse(visits=visits, consultations=consultations, leaders=leaders, rooms=rooms)
