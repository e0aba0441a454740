"""RoutingService gRPC adapter: translates proto ↔ domain and delegates to ``services.routing.handlers``."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import PurePath
from typing import Any

from lianxin.common.v1 import common_pb2
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc

from services.common.calendar import OfficialYear, check_calendar_text
from services.common.calendar_store import NodeCalendar
from services.common.db import read_only
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.security import OFFICE, current_principal
from services.common.timeutil import china_date, from_duration, from_timestamp, to_timestamp, to_utc
from services.routing import handlers
from services.routing.evaluation import EvaluationSample
from services.routing.handlers import (
    Routing,
    SampleView,
    StoredWorkOrder,
    Supervision,
    UnitOfWorkFactory,
    WorkOrderQuery,
)
from services.routing.workorder import State, WorkOrderEvent, allowed_actions

DEFAULT_PAGE, MAX_PAGE = 50, 500


def acting_unit() -> str:
    """The handling unit the caller acts as, when it is one: a unit's operator acts on its own unit's
    cases only. "" for the node's office (clerk, supervisor, admin roles act for the whole node) and
    when tokens are off."""
    principal = current_principal()
    if principal is None or principal.kind != "operator" or principal.has_any(OFFICE):
        return ""
    return principal.unit


def _state(state: State | None) -> common_pb2.CaseState.ValueType:
    return common_pb2.CaseState.Value(f"CASE_STATE_{state.value}") if state else common_pb2.CASE_STATE_UNSPECIFIED


def _domain_state(value: common_pb2.CaseState.ValueType) -> State:
    try:
        name = common_pb2.CaseState.Name(value).removeprefix("CASE_STATE_")
    except ValueError:
        raise InvalidArgument("states", f"unknown state value {value}") from None
    try:
        return State(name)
    except ValueError:
        raise InvalidArgument("states", f"{name} is not a work-order state") from None


def work_order_message(stored: StoredWorkOrder, *, now: datetime | None = None) -> routing_pb2.WorkOrder:
    order = stored.order
    running = sorted({**order.deadlines, **order.windows}.items())
    return routing_pb2.WorkOrder(
        work_order_id=order.id,
        case_id=order.case_id,
        node=order.node,
        unit_id=order.unit_id or "",
        category=order.category or "",
        region_code=order.region_code or "",
        state=_state(order.state),
        deadlines=[
            common_pb2.Deadline(
                kind=k,
                due_at=to_timestamp(v),
                overdue=bool(now is not None and k in order.deadlines and v < now),
            )
            for k, v in running
        ],
        objection_count=sum(1 for h in order.history if h.action == "object"),
        extension_used=order.extension_days > 0,
        reopen_count=order.reopen_count,
        created_at=to_timestamp(stored.created_at),
        updated_at=to_timestamp(stored.updated_at),
        history=[
            routing_pb2.WorkOrderHistoryEntry(
                at=to_timestamp(h.at),
                actor=h.actor,
                action=h.action,
                from_state=_state(h.from_state),
                to_state=_state(h.to_state),
                reason=h.reason,
            )
            for h in order.history
        ],
        reply_text=order.reply_text or "",
        attachment_refs=list(order.reply_attachments),
        version=order.version,
        provisional_deadlines=list(stored.provisional),
        allowed_actions=[action.value for action in allowed_actions(order, now)],
        assisting_units=[
            routing_pb2.AssistingUnit(
                unit_id=a.unit_id,
                requested_at=to_timestamp(a.requested_at),
                due_at=to_timestamp(a.due),
                answered_at=to_timestamp(a.answered_at) if a.answered_at is not None else None,
                answer=a.answer,
                late=a.late,
            )
            for a in order.assists.values()
        ],
        leader_class=order.leader_class or "",
        instruction=None
        if order.instruction is None
        else routing_pb2.LeaderInstruction(
            leader_name=order.instruction.leader_name,
            text=order.instruction.text,
            at=to_timestamp(order.instruction.at),
            recorded_by=order.instruction.recorded_by,
        ),
    )


def supervision_message(s: Supervision) -> routing_pb2.Supervision:
    return routing_pb2.Supervision(
        supervision_id=s.supervision_id,
        case_id=s.case_id,
        work_order_id=s.work_order_id,
        level=s.level,
        by_node=s.by_node,
        by_actor=s.by_actor,
        demand=s.demand,
        due_at=to_timestamp(s.due_at),
        issued_at=to_timestamp(s.issued_at),
        outcome=s.outcome,
        state=s.state,
    )


def _page_size(page: common_pb2.PageRequest) -> int:
    if page.page_size < 0:
        raise InvalidArgument("page.page_size", "must be >= 0")
    return min(page.page_size or DEFAULT_PAGE, MAX_PAGE)


def _token(at: datetime, key: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([to_utc(at).isoformat(), key]).encode()).decode()


def _untoken(token: str) -> tuple[datetime, str] | None:
    if not token:
        return None
    try:
        at, key = json.loads(base64.urlsafe_b64decode(token.encode()))
        return to_utc(datetime.fromisoformat(at)), str(key)
    except (ValueError, TypeError):
        raise InvalidArgument("page.page_token", "not a token from a previous page") from None


def _sample_token(unit_id: str, rank: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([unit_id, rank]).encode()).decode()


def _unsample_token(token: str) -> tuple[str, int] | None:
    if not token:
        return None
    try:
        unit, rank = json.loads(base64.urlsafe_b64decode(token.encode()))
        unit, rank = str(unit), int(rank)
    except (ValueError, TypeError):
        raise InvalidArgument("page.page_token", "not a token from a previous page") from None
    if not (0 <= rank < 2**31 and len(unit) <= 64 and unit.isprintable()):
        raise InvalidArgument("page.page_token", "not a token from a previous page")
    return unit, rank


def _rating_name(value: int) -> str:
    """The proto rating as the domain names it ("" for unspecified or unknown: refused there)."""
    if value == common_pb2.SATISFACTION_UNSPECIFIED or value not in common_pb2.Satisfaction.values():
        return ""
    return common_pb2.Satisfaction.Name(common_pb2.Satisfaction.ValueType(value)).removeprefix("SATISFACTION_")


def _sample_message(sample: EvaluationSample) -> routing_pb2.EvaluationSample:
    return routing_pb2.EvaluationSample(
        month=sample.month,
        node=sample.node,
        seed=sample.seed,
        percent=sample.rule.percent,
        minimum=sample.rule.minimum,
        drawn_at=to_timestamp(sample.drawn_at),
        drawn_by=sample.drawn_by,
        units=[
            routing_pb2.EvaluationUnitCount(unit_id=u.unit_id, closed=u.closed, sampled=u.sampled, rated=u.rated)
            for u in sample.units
        ],
    )


def _item_message(view: SampleView) -> routing_pb2.EvaluationItem:
    item = view.item
    message = routing_pb2.EvaluationItem(
        case_id=item.case_id,
        work_order_id=item.work_order_id,
        unit_id=item.unit_id,
        category=item.category,
        region_code=item.region_code,
        closed_at=to_timestamp(item.closed_at),
        title=view.title,
        body=view.body,
        reply_text=view.reply_text,
        comment=item.comment,
        rated_by=item.rated_by,
    )
    if item.rating:
        message.rating = common_pb2.Satisfaction.Value(f"SATISFACTION_{item.rating}")
    if item.rated_at is not None:
        message.rated_at.CopyFrom(to_timestamp(item.rated_at))
    return message


Step = Callable[[StoredWorkOrder, datetime, str], list[WorkOrderEvent]]


class RoutingServicer(routing_grpc.RoutingServiceServicer):
    def __init__(
        self,
        *,
        uow_factory: UnitOfWorkFactory,
        routing: Routing,
        clock: Callable[[], datetime],
        notify: Callable[[], None] = lambda: None,
        calendar: NodeCalendar | None = None,
    ) -> None:
        self._calendar = calendar
        self._uow_factory = uow_factory
        self._routing = routing
        self._clock = clock
        self._notify = notify

    def _region_prefix(self, region_code: str) -> str:
        """The significant digits of a region filter ("" for none); an unknown code is INVALID_ARGUMENT."""
        if not region_code:
            return ""
        if region_code not in self._routing.regions:
            raise InvalidArgument("region_code", f"unknown region code {region_code}")
        return _significant(region_code)

    def _act(self, work_order_id: str, actor: str, expected_version: int, step: Step) -> routing_pb2.WorkOrder:
        now = self._clock()
        stored = handlers.act(
            work_order_id,
            step,
            actor=actor,
            expected_version=expected_version,
            uow_factory=self._uow_factory,
            routing=self._routing,
            now=now,
        )
        self._notify()
        return work_order_message(stored, now=to_utc(now))

    # -- queries -----------------------------------------------------------------------------------

    @read_only
    def GetWorkOrder(self, request: routing_pb2.GetWorkOrderRequest, context: Any) -> routing_pb2.GetWorkOrderResponse:
        stored = handlers.get_work_order(request.work_order_id, uow_factory=self._uow_factory)
        return routing_pb2.GetWorkOrderResponse(work_order=work_order_message(stored, now=to_utc(self._clock())))

    @read_only
    def ListWorkOrders(
        self, request: routing_pb2.ListWorkOrdersRequest, context: Any
    ) -> routing_pb2.ListWorkOrdersResponse:
        now = to_utc(self._clock())
        limit = _page_size(request.page)
        due_before = None
        if request.HasField("due_within"):
            within = from_duration(request.due_within, "due_within")
            if within is None:
                raise InvalidArgument("due_within", "must be positive")
            due_before = now + within
        query = WorkOrderQuery(
            unit_id=request.unit_id,
            case_id=request.case_id,
            assisting_unit_id=request.assisting_unit_id,
            states=tuple(_domain_state(s) for s in request.states),
            overdue_only=request.overdue_only,
            due_before=due_before,
            now=now,
        )
        with self._uow_factory() as uow:
            found, total = uow.list_work_orders(query, after=_untoken(request.page.page_token), limit=limit + 1)
        more = len(found) > limit
        found = found[:limit]
        token = ""
        if more:
            last = found[-1]
            token = _token(last.next_due or handlers.FAR_FUTURE, last.order.id)
        return routing_pb2.ListWorkOrdersResponse(
            work_orders=[work_order_message(s, now=now) for s in found],
            page=common_pb2.PageResponse(next_page_token=token, total_size=total),
        )

    @read_only
    def ListSupervisions(
        self, request: routing_pb2.ListSupervisionsRequest, context: Any
    ) -> routing_pb2.ListSupervisionsResponse:
        limit = _page_size(request.page)
        prefix = self._region_prefix(request.region_code)
        with self._uow_factory() as uow:
            found, total = uow.list_supervisions(
                case_id=request.case_id, region_prefix=prefix, after=_untoken(request.page.page_token), limit=limit + 1
            )
        more = len(found) > limit
        found = found[:limit]
        token = _token(found[-1].issued_at, found[-1].supervision_id) if more else ""
        return routing_pb2.ListSupervisionsResponse(
            supervisions=[supervision_message(s) for s in found],
            page=common_pb2.PageResponse(next_page_token=token, total_size=total),
        )

    # -- actions -----------------------------------------------------------------------------------

    def AcceptWorkOrder(
        self, request: routing_pb2.AcceptWorkOrderRequest, context: Any
    ) -> routing_pb2.AcceptWorkOrderResponse:
        r = self._routing
        wo = self._act(
            request.work_order_id,
            request.actor,
            request.expected_version,
            lambda s, at, who: handlers.accept(s, at, who, r, request.note),
        )
        return routing_pb2.AcceptWorkOrderResponse(work_order=wo)

    def RefuseWorkOrder(
        self, request: routing_pb2.RefuseWorkOrderRequest, context: Any
    ) -> routing_pb2.RefuseWorkOrderResponse:
        wo = self._act(
            request.work_order_id,
            request.actor,
            request.expected_version,
            lambda s, at, who: s.order.refuse(at=at, actor=who, reason=request.reason),
        )
        return routing_pb2.RefuseWorkOrderResponse(work_order=wo)

    def ObjectWorkOrder(
        self, request: routing_pb2.ObjectWorkOrderRequest, context: Any
    ) -> routing_pb2.ObjectWorkOrderResponse:
        reason = request.reason
        if request.suggested_unit_id and reason.strip():
            reason = f"{reason} (suggests {request.suggested_unit_id})"
        wo = self._act(
            request.work_order_id,
            request.actor,
            request.expected_version,
            lambda s, at, who: s.order.object(at=at, actor=who, reason=reason),
        )
        return routing_pb2.ObjectWorkOrderResponse(work_order=wo)

    def ArbitrateObjection(
        self, request: routing_pb2.ArbitrateObjectionRequest, context: Any
    ) -> routing_pb2.ArbitrateObjectionResponse:
        if request.decision == routing_pb2.ARBITRATION_DECISION_UNSPECIFIED:
            raise InvalidArgument("decision", "reassign or uphold is required")
        reassign = request.decision == routing_pb2.ARBITRATION_DECISION_REASSIGN
        r = self._routing
        wo = self._act(
            request.work_order_id,
            request.actor,
            request.expected_version,
            lambda s, at, who: handlers.arbitrate(
                s, at, who, r, reassign=reassign, unit_id=request.new_unit_id, reason=request.reason
            ),
        )
        # 改派 moves the same work order to the new unit (its history shows both), so no second one.
        return routing_pb2.ArbitrateObjectionResponse(work_order=wo)

    def RequestExtension(
        self, request: routing_pb2.RequestExtensionRequest, context: Any
    ) -> routing_pb2.RequestExtensionResponse:
        r = self._routing
        days = request.days or r.rules.policy.settle_extension_max_days
        wo = self._act(
            request.work_order_id,
            request.actor,
            request.expected_version,
            lambda s, at, who: handlers.request_extension(s, at, who, r, days=days, reason=request.reason),
        )
        return routing_pb2.RequestExtensionResponse(work_order=wo)

    def ApproveExtension(
        self, request: routing_pb2.ApproveExtensionRequest, context: Any
    ) -> routing_pb2.ApproveExtensionResponse:
        r = self._routing
        wo = self._act(
            request.work_order_id,
            request.actor,
            request.expected_version,
            lambda s, at, who: handlers.decide_extension(s, at, who, r, approve=request.approve, reason=request.reason),
        )
        return routing_pb2.ApproveExtensionResponse(work_order=wo)

    def ReplyWorkOrder(
        self, request: routing_pb2.ReplyWorkOrderRequest, context: Any
    ) -> routing_pb2.ReplyWorkOrderResponse:
        r = self._routing
        wo = self._act(
            request.work_order_id,
            request.actor,
            request.expected_version,
            lambda s, at, who: handlers.reply(
                s, at, who, r, text=request.text, attachments=list(request.attachment_refs), acting_unit=acting_unit()
            ),
        )
        return routing_pb2.ReplyWorkOrderResponse(work_order=wo)

    def RequestAssist(
        self, request: routing_pb2.RequestAssistRequest, context: Any
    ) -> routing_pb2.RequestAssistResponse:
        r, unit = self._routing, acting_unit()
        wo = self._act(
            request.work_order_id,
            request.actor,
            request.expected_version,
            lambda s, at, who: handlers.request_assist(
                s, at, who, r, unit_ids=list(request.unit_ids), request=request.request, acting_unit=unit
            ),
        )
        return routing_pb2.RequestAssistResponse(work_order=wo)

    def AnswerAssist(self, request: routing_pb2.AnswerAssistRequest, context: Any) -> routing_pb2.AnswerAssistResponse:
        r, unit = self._routing, acting_unit()
        wo = self._act(
            request.work_order_id,
            request.actor,
            request.expected_version,
            lambda s, at, who: handlers.answer_assist(
                s, at, who, r, unit_id=request.unit_id, text=request.text, acting_unit=unit
            ),
        )
        return routing_pb2.AnswerAssistResponse(work_order=wo)

    def CloseWorkOrder(
        self, request: routing_pb2.CloseWorkOrderRequest, context: Any
    ) -> routing_pb2.CloseWorkOrderResponse:
        wo = self._act(
            request.work_order_id,
            request.actor,
            request.expected_version,
            lambda s, at, who: s.order.close(at=at, actor=who, reason=request.note),
        )
        return routing_pb2.CloseWorkOrderResponse(work_order=wo)

    def ReopenWorkOrder(
        self, request: routing_pb2.ReopenWorkOrderRequest, context: Any
    ) -> routing_pb2.ReopenWorkOrderResponse:
        r = self._routing
        wo = self._act(
            request.work_order_id,
            request.actor,
            request.expected_version,
            lambda s, at, who: s.order.reopen(at=at, actor=who, rules=r.rules, reason=request.reason),
        )
        return routing_pb2.ReopenWorkOrderResponse(work_order=wo)

    def PauseWorkOrder(
        self, request: routing_pb2.PauseWorkOrderRequest, context: Any
    ) -> routing_pb2.PauseWorkOrderResponse:
        wo = self._act(
            request.work_order_id,
            request.actor,
            request.expected_version,
            lambda s, at, who: s.order.pause(at=at, actor=who, reason=request.reason),
        )
        return routing_pb2.PauseWorkOrderResponse(work_order=wo)

    def ResumeWorkOrder(
        self, request: routing_pb2.ResumeWorkOrderRequest, context: Any
    ) -> routing_pb2.ResumeWorkOrderResponse:
        r = self._routing
        wo = self._act(
            request.work_order_id,
            request.actor,
            request.expected_version,
            lambda s, at, who: s.order.resume(at=at, actor=who, rules=r.rules, reason=request.reason),
        )
        return routing_pb2.ResumeWorkOrderResponse(work_order=wo)

    def ReviewWorkOrder(
        self, request: routing_pb2.ReviewWorkOrderRequest, context: Any
    ) -> routing_pb2.ReviewWorkOrderResponse:
        if request.decision == routing_pb2.REVIEW_DECISION_UNSPECIFIED:
            raise InvalidArgument("decision", "uphold or redo is required")
        redo = request.decision == routing_pb2.REVIEW_DECISION_REDO
        r = self._routing
        wo = self._act(
            request.work_order_id,
            request.actor,
            request.expected_version,
            lambda s, at, who: handlers.review_decision(s, at, who, r, redo=redo, reason=request.reason),
        )
        return routing_pb2.ReviewWorkOrderResponse(work_order=wo)

    def ListManualQueue(
        self, request: routing_pb2.ListManualQueueRequest, context: Any
    ) -> routing_pb2.ListManualQueueResponse:
        limit = _page_size(request.page)
        with self._uow_factory() as uow:
            found, total = uow.list_work_orders(
                WorkOrderQuery(manual_only=True), after=_untoken(request.page.page_token), limit=limit + 1
            )
        if request.region_code:
            prefix = _significant(request.region_code)
            found = [s for s in found if (s.order.region_code or "").startswith(prefix)]
        more = len(found) > limit
        found = found[:limit]
        token = _token(found[-1].next_due or handlers.FAR_FUTURE, found[-1].order.id) if more else ""
        return routing_pb2.ListManualQueueResponse(
            items=[
                routing_pb2.ManualQueueItem(work_order=work_order_message(s), reason=s.manual_reason) for s in found
            ],
            page=common_pb2.PageResponse(next_page_token=token, total_size=total),
        )

    @read_only
    def ListLeaderQueue(
        self, request: routing_pb2.ListLeaderQueueRequest, context: Any
    ) -> routing_pb2.ListLeaderQueueResponse:
        limit = _page_size(request.page)
        prefix = self._region_prefix(request.region_code)
        now = to_utc(self._clock())
        with self._uow_factory() as uow:
            found, total = uow.list_work_orders(
                WorkOrderQuery(leader_queue=True), after=_untoken(request.page.page_token), limit=limit + 1
            )
        found = [s for s in found if (s.order.region_code or "").startswith(prefix)]
        more = len(found) > limit
        found = found[:limit]
        token = _token(found[-1].next_due or handlers.FAR_FUTURE, found[-1].order.id) if more else ""
        classes = self._routing.leader_classes
        items = []
        for s in found:
            cls = classes.get(s.order.leader_class or "")
            items.append(
                routing_pb2.LeaderQueueItem(
                    work_order=work_order_message(s, now=now),
                    class_id=s.order.leader_class or "",
                    class_name=cls.name if cls else "",
                    leader=cls.leader if cls else "",
                )
            )
        return routing_pb2.ListLeaderQueueResponse(
            items=items, page=common_pb2.PageResponse(next_page_token=token, total_size=total)
        )

    def RecordInstruction(
        self, request: routing_pb2.RecordInstructionRequest, context: Any
    ) -> routing_pb2.RecordInstructionResponse:
        r = self._routing
        wo = self._act(
            request.work_order_id,
            request.actor,
            request.expected_version,
            lambda s, at, who: handlers.record_instruction(
                s, at, who, r, leader_name=request.leader_name, instruction=request.instruction
            ),
        )
        return routing_pb2.RecordInstructionResponse(work_order=wo)

    def DrawEvaluationSample(
        self, request: routing_pb2.DrawEvaluationSampleRequest, context: Any
    ) -> routing_pb2.DrawEvaluationSampleResponse:
        sample, items = handlers.draw_evaluation_sample(
            month=request.month,
            seed=request.seed,
            percent=request.percent,
            minimum=request.minimum,
            actor=request.actor,
            uow_factory=self._uow_factory,
            routing=self._routing,
            now=self._clock(),
        )
        self._notify()
        return routing_pb2.DrawEvaluationSampleResponse(
            sample=_sample_message(sample),
            items=[_item_message(SampleView(i, "", "", "")) for i in items],
        )

    def ListEvaluationSample(
        self, request: routing_pb2.ListEvaluationSampleRequest, context: Any
    ) -> routing_pb2.ListEvaluationSampleResponse:
        limit = _page_size(request.page)
        sample, views, total = handlers.list_evaluation_sample(
            month=request.month,
            unrated_only=request.unrated_only,
            after=_unsample_token(request.page.page_token),
            limit=limit + 1,
            uow_factory=self._uow_factory,
        )
        more = len(views) > limit
        views = views[:limit]
        token = _sample_token(views[-1].item.unit_id, views[-1].item.rank) if more else ""
        return routing_pb2.ListEvaluationSampleResponse(
            sample=_sample_message(sample),
            items=[_item_message(v) for v in views],
            page=common_pb2.PageResponse(next_page_token=token, total_size=total),
        )

    def RecordThirdPartyRating(
        self, request: routing_pb2.RecordThirdPartyRatingRequest, context: Any
    ) -> routing_pb2.RecordThirdPartyRatingResponse:
        view = handlers.record_third_party_rating(
            month=request.month,
            case_id=request.case_id,
            actor=request.actor,
            rating=_rating_name(request.rating),
            comment=request.comment,
            uow_factory=self._uow_factory,
            now=self._clock(),
        )
        self._notify()
        return routing_pb2.RecordThirdPartyRatingResponse(item=_item_message(view))

    def AssignManually(
        self, request: routing_pb2.AssignManuallyRequest, context: Any
    ) -> routing_pb2.AssignManuallyResponse:
        if request.node and request.node != self._routing.node:
            if request.unit_id:
                raise InvalidArgument("unit_id", "must be empty when handing off to another node (node is set)")
            handlers.hand_down(
                case_id=request.case_id,
                actor=request.actor,
                expected_version=request.expected_version,
                to_node=request.node,
                reason=request.reason,
                uow_factory=self._uow_factory,
                routing=self._routing,
                now=self._clock(),
            )
            self._notify()
            return routing_pb2.AssignManuallyResponse()
        if not request.case_id:
            raise InvalidArgument("case_id", "must be set")
        r = self._routing
        wo = self._act(
            handlers.work_order_id_for(request.case_id, r.node),
            request.actor,
            0,
            lambda s, at, who: handlers.assign_manually(s, at, who, r, unit_id=request.unit_id, reason=request.reason),
        )
        return routing_pb2.AssignManuallyResponse(work_order=wo)

    def EscalateCase(self, request: routing_pb2.EscalateCaseRequest, context: Any) -> routing_pb2.EscalateCaseResponse:
        handed = handlers.escalate(
            case_id=request.case_id,
            actor=request.actor,
            expected_version=request.expected_version,
            reason=request.reason,
            uow_factory=self._uow_factory,
            routing=self._routing,
            now=self._clock(),
        )
        self._notify()
        return routing_pb2.EscalateCaseResponse(to_node=handed.to_node, new_owner_epoch=handed.new_owner_epoch)

    def MergeCases(self, request: routing_pb2.MergeCasesRequest, context: Any) -> routing_pb2.MergeCasesResponse:
        now = self._clock()
        result = handlers.merge_cases(
            main_case_id=request.main_case_id,
            case_ids=list(request.case_ids),
            actor=request.actor,
            expected_version=request.expected_version,
            reason=request.reason,
            acting_unit=acting_unit(),
            uow_factory=self._uow_factory,
            routing=self._routing,
            now=now,
        )
        self._notify()
        return routing_pb2.MergeCasesResponse(
            main_work_order=work_order_message(result.main, now=to_utc(now)),
            merged_work_orders=[work_order_message(s, now=to_utc(now)) for s in result.merged],
        )

    def UnmergeCase(self, request: routing_pb2.UnmergeCaseRequest, context: Any) -> routing_pb2.UnmergeCaseResponse:
        now = self._clock()
        stored = handlers.unmerge_case(
            case_id=request.case_id,
            actor=request.actor,
            expected_version=request.expected_version,
            reason=request.reason,
            acting_unit=acting_unit(),
            uow_factory=self._uow_factory,
            routing=self._routing,
            now=now,
        )
        self._notify()
        return routing_pb2.UnmergeCaseResponse(work_order=work_order_message(stored, now=to_utc(now)))

    def Supervise(self, request: routing_pb2.SuperviseRequest, context: Any) -> routing_pb2.SuperviseResponse:
        sent = handlers.supervise(
            case_id=request.case_id,
            work_order_id=request.work_order_id,
            actor=request.actor,
            expected_version=request.expected_version,
            level=request.level,
            demand=request.demand,
            due_at=from_timestamp(request.due_at, "due_at"),
            uow_factory=self._uow_factory,
            routing=self._routing,
            now=self._clock(),
        )
        self._notify()
        return routing_pb2.SuperviseResponse(
            supervision=supervision_message(sent.supervision), forwarded_to_owner=bool(sent.sent_to)
        )

    # -- the node's calendar -----------------------------------------------------------------------

    def LoadCalendar(self, request: routing_pb2.LoadCalendarRequest, context: Any) -> routing_pb2.LoadCalendarResponse:
        if self._calendar is None:
            raise FailedPrecondition("this routing process keeps no node calendar")
        file_name = PurePath(request.file_name or "calendar.yaml").name[:200]
        years = calendar_years_from_upload(request.content, file_name)
        now = self._clock()
        recomputed = handlers.load_calendar_years(
            years,
            calendar=self._calendar,
            uow_factory=self._uow_factory,
            routing=self._routing,
            now=now,
            file_name=file_name,
            actor=request.actor or "operator",
        )
        self._notify()
        today = china_date(now)
        return routing_pb2.LoadCalendarResponse(
            years=[calendar_year_message(self._calendar, y.year) for y in years],
            recomputed_work_orders=recomputed,
            covered_until=self._calendar.covered_until(today).isoformat(),
            days_left=self._calendar.days_left(today),
        )

    def ListUnits(self, request: routing_pb2.ListUnitsRequest, context: Any) -> routing_pb2.ListUnitsResponse:
        catalogue = self._routing.catalogue
        return routing_pb2.ListUnitsResponse(
            units=[
                routing_pb2.HandlingUnit(unit_id=u.id, name=u.name, node=catalogue.node, categories=u.categories)
                for u in catalogue.units.values()
            ]
        )

    def ListCalendarYears(
        self, request: routing_pb2.ListCalendarYearsRequest, context: Any
    ) -> routing_pb2.ListCalendarYearsResponse:
        if self._calendar is None:
            raise FailedPrecondition("this routing process keeps no node calendar")
        self._calendar.refresh(force=True)
        first, last = self._calendar.known_range()
        today = china_date(self._clock())
        return routing_pb2.ListCalendarYearsResponse(
            years=[
                calendar_year_message(self._calendar, year)
                for year in range(first.year, last.year + 1)
                if self._calendar.origin(year)
            ],
            covered_until=self._calendar.covered_until(today).isoformat(),
            days_left=self._calendar.days_left(today),
        )


# A year's file is a few kilobytes; anything near this is not a holiday notice.
MAX_CALENDAR_BYTES = 256 * 1024


def calendar_years_from_upload(content: bytes, file_name: str) -> list[OfficialYear]:
    """The years of an uploaded calendar file, or INVALID_ARGUMENT naming its first problem (and how many more)."""
    if not content:
        raise InvalidArgument("content", "empty: send the calendar file's content")
    if len(content) > MAX_CALENDAR_BYTES:
        raise InvalidArgument("content", f"{len(content)} bytes, more than {MAX_CALENDAR_BYTES} for a calendar file")
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument("content", "not UTF-8 text") from None
    check = check_calendar_text(text, file_name)
    if check.problems:
        more = len(check.problems) - 1
        raise InvalidArgument("content", str(check.problems[0]) + (f" (and {more} more)" if more else ""))
    return check.years


def calendar_year_message(calendar: NodeCalendar, year: int) -> routing_pb2.CalendarYear:
    origin = calendar.origin(year)
    message = routing_pb2.CalendarYear(year=year, origin=origin)
    official = calendar.years.get(year)
    if official is not None:
        message.source = official.source
        message.holiday_days = len(official.holidays)
        message.make_up_workdays = len(official.workdays)
    stored = calendar.loaded.get(year)
    if stored is not None and origin == "loaded":
        message.loaded_at.CopyFrom(to_timestamp(stored.loaded_at))
        message.file_name = stored.file_name
        message.loaded_by = stored.loaded_by
    return message


def _significant(code: str) -> str:
    while code.endswith("00") and len(code) > 2:
        code = code[:-2]
    return code
