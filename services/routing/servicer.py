"""RoutingService gRPC adapter: request → handler call → reply; the translation is in ``mapping``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import PurePath
from typing import Any

from lianxin.common.v1 import common_pb2
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc

from services.common.calendar_store import NodeCalendar
from services.common.db import read_only
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.timeutil import china_date, from_timestamp, to_utc
from services.routing import handlers
from services.routing.domain import WorkOrderEvent
from services.routing.handlers import Routing, SampleView, StoredWorkOrder, UnitOfWorkFactory, WorkOrderQuery
from services.routing.mapping import (
    DEFAULT_PAGE,
    acting_unit,
    calendar_year_message,
    calendar_years_from_upload,
    from_page_token,
    from_sample_token,
    inbox_item_message,
    inbox_page,
    item_message,
    page_of,
    page_size,
    page_token,
    rating_name,
    sample_message,
    sample_token,
    significant,
    supervision_message,
    work_order_message,
    work_order_page,
    work_order_query,
)

Step = Callable[[StoredWorkOrder, datetime, str], list[WorkOrderEvent]]


class RoutingServicer(routing_grpc.RoutingServiceServicer):
    def __init__(
        self,
        *,
        uow_factory: UnitOfWorkFactory,
        routing: Routing,
        reads: UnitOfWorkFactory | None = None,
        clock: Callable[[], datetime],
        notify: Callable[[], None] = lambda: None,
        calendar: NodeCalendar | None = None,
    ) -> None:
        self._calendar = calendar
        self._uow_factory = uow_factory
        # The query RPCs' units of work: read-only, without an ORM session when the adapter has one.
        self._reads = reads or uow_factory
        self._routing = routing
        self._clock = clock
        self._notify = notify

    def _region_prefix(self, region_code: str) -> str:
        """The significant digits of a region filter ("" for none); an unknown code is INVALID_ARGUMENT."""
        if not region_code:
            return ""
        if region_code not in self._routing.regions:
            raise InvalidArgument("region_code", f"unknown region code {region_code}")
        return significant(region_code)

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
        stored = handlers.get_work_order(request.work_order_id, uow_factory=self._reads)
        return routing_pb2.GetWorkOrderResponse(work_order=work_order_message(stored, now=to_utc(self._clock())))

    @read_only
    def ListWorkOrders(
        self, request: routing_pb2.ListWorkOrdersRequest, context: Any
    ) -> routing_pb2.ListWorkOrdersResponse:
        now = to_utc(self._clock())
        with self._reads() as uow:
            found, total = uow.list_work_orders(
                work_order_query(request, now),
                after=from_page_token(request.page.page_token),
                limit=page_size(request.page) + 1,
            )
            # A case page's supervisions in the same read (issue 17: one call and transaction fewer).
            watched = (
                uow.list_supervisions(case_id=request.case_id, region_prefix="", after=None, limit=DEFAULT_PAGE)[0]
                if request.with_supervisions
                else []
            )
        found, token = work_order_page(found, page_size(request.page))
        return routing_pb2.ListWorkOrdersResponse(
            work_orders=[work_order_message(s, now=now) for s in found],
            page=common_pb2.PageResponse(next_page_token=token, total_size=total),
            supervisions=[supervision_message(s) for s in watched],
        )

    @read_only
    def ListInbox(self, request: routing_pb2.ListInboxRequest, context: Any) -> routing_pb2.ListInboxResponse:
        now = to_utc(self._clock())
        with self._reads() as uow:
            found, total = uow.list_inbox(
                work_order_query(request, now),
                after=from_page_token(request.page.page_token),
                limit=page_size(request.page) + 1,
            )
        found, token = inbox_page(found, page_size(request.page))
        return routing_pb2.ListInboxResponse(
            items=[inbox_item_message(row, now=now) for row in found],
            page=common_pb2.PageResponse(next_page_token=token, total_size=total),
        )

    @read_only
    def ListSupervisions(
        self, request: routing_pb2.ListSupervisionsRequest, context: Any
    ) -> routing_pb2.ListSupervisionsResponse:
        limit = page_size(request.page)
        prefix = self._region_prefix(request.region_code)
        with self._reads() as uow:
            found, total = uow.list_supervisions(
                case_id=request.case_id,
                region_prefix=prefix,
                after=from_page_token(request.page.page_token),
                limit=limit + 1,
            )
        found, token = page_of(found, limit, lambda s: page_token(s.issued_at, s.supervision_id))
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
        limit = page_size(request.page)
        with self._uow_factory() as uow:
            found, total = uow.list_work_orders(
                WorkOrderQuery(manual_only=True), after=from_page_token(request.page.page_token), limit=limit + 1
            )
        if request.region_code:
            prefix = significant(request.region_code)
            found = [s for s in found if (s.order.region_code or "").startswith(prefix)]
        found, token = work_order_page(found, limit)
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
        limit = page_size(request.page)
        prefix = self._region_prefix(request.region_code)
        now = to_utc(self._clock())
        with self._uow_factory() as uow:
            found, total = uow.list_work_orders(
                WorkOrderQuery(leader_queue=True), after=from_page_token(request.page.page_token), limit=limit + 1
            )
        found = [s for s in found if (s.order.region_code or "").startswith(prefix)]
        found, token = work_order_page(found, limit)
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
            sample=sample_message(sample), items=[item_message(SampleView(i, "", "", "")) for i in items]
        )

    def ListEvaluationSample(
        self, request: routing_pb2.ListEvaluationSampleRequest, context: Any
    ) -> routing_pb2.ListEvaluationSampleResponse:
        limit = page_size(request.page)
        sample, views, total = handlers.list_evaluation_sample(
            month=request.month,
            unrated_only=request.unrated_only,
            after=from_sample_token(request.page.page_token),
            limit=limit + 1,
            uow_factory=self._uow_factory,
        )
        views, token = page_of(views, limit, lambda v: sample_token(v.item.unit_id, v.item.rank))
        return routing_pb2.ListEvaluationSampleResponse(
            sample=sample_message(sample),
            items=[item_message(v) for v in views],
            page=common_pb2.PageResponse(next_page_token=token, total_size=total),
        )

    def RecordThirdPartyRating(
        self, request: routing_pb2.RecordThirdPartyRatingRequest, context: Any
    ) -> routing_pb2.RecordThirdPartyRatingResponse:
        view = handlers.record_third_party_rating(
            month=request.month,
            case_id=request.case_id,
            actor=request.actor,
            rating=rating_name(request.rating),
            comment=request.comment,
            uow_factory=self._uow_factory,
            now=self._clock(),
        )
        self._notify()
        return routing_pb2.RecordThirdPartyRatingResponse(item=item_message(view))

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
