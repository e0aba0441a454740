"""The case page: the case, its work order with the forms allowed now, supervision, video visits, 远程会商."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.video.v1 import video_service_pb2 as video_pb2
from starlette.responses import Response

from services.common.security import OFFICE
from services.web import labels
from services.web.app import Page
from services.web.client import CallFailed
from services.web.console.actions import FORMS_BY_ACTION, forms_for, owing_units
from services.web.console.common import ROUTING, VIDEO, deadline_view, require, settled, starts_at, to_int
from services.web.console.consultation import (
    CONSULT_ACTIONS,
    CONSULT_ROWS,
    book_consultation,
    consultation_error,
    propose_consultation,
    record_minutes,
    reschedule_consultation,
)


def _case_orders(
    case_id: str, assisting_unit: str = "", *, supervisions: bool = False
) -> routing_pb2.ListWorkOrdersRequest:
    # With their histories: the page shows the latest with its history, and needs no GetWorkOrder;
    # with the case's supervisions when the page shows them (one routing call instead of two).
    page = common_pb2.PageRequest(page_size=50)
    return routing_pb2.ListWorkOrdersRequest(
        case_id=case_id,
        assisting_unit_id=assisting_unit,
        with_history=True,
        with_supervisions=supervisions,
        page=page,
    )


def _current_work_order(page: Page, case_id: str, started: Any = None) -> routing_pb2.WorkOrder | None:
    """The case's latest work order at this node, with its history (``started``: the page's
    ListWorkOrders already asked; without it, asked here)."""
    listing = page.client.routing.ListWorkOrders
    found = (page.client.result(started) if started else page.call(listing, _case_orders(case_id))).work_orders
    unit = page.operator.principal.unit if page.operator else ""
    if not found and unit:
        # A unit's operator lists its own unit's work orders only; where it assists (协办) it asks as that.
        found = page.call(listing, _case_orders(case_id, unit)).work_orders
    if not found:
        return None
    latest: routing_pb2.WorkOrder = max(found, key=lambda w: (w.created_at.seconds, w.created_at.nanos))
    return latest


@dataclass(frozen=True)
class _CaseCalls:
    """The case page's calls, every one that needs nothing from another started before the first answer."""

    case: Any
    orders: Any  # the case's work orders with their histories and the case's supervisions
    video: Any  # the case's visits and consultations, the leaders (may_book) and rooms (may_consult)
    slots: Any  # None without a leader chosen
    leader: str
    may_book: bool
    may_consult: bool


def _start_case_calls(page: Page, case_id: str) -> _CaseCalls:
    client, token = page.client, page.token
    leader = page.query("leader")[:64] or page.field("leader_id")
    may_book = page.may(f"{VIDEO}/BookVisit")
    may_consult = page.may(f"{VIDEO}/BookConsultation")
    return _CaseCalls(
        case=client.start(client.intake.GetCase, intake_pb2.GetCaseRequest(case_id=case_id), token),
        orders=client.start(client.routing.ListWorkOrders, _case_orders(case_id, supervisions=True), token),
        # Video's four lists in one call (visits, consultations, receiving leaders, rooms).
        video=client.start(
            client.video.GetCaseVideo,
            video_pb2.GetCaseVideoRequest(case_id=case_id, with_leaders=may_book, with_rooms=may_consult),
            token,
        ),
        slots=client.start(client.video.ListSlots, video_pb2.ListSlotsRequest(leader_id=leader, max_items=8), token)
        if may_book and leader
        else None,
        leader=leader,
        may_book=may_book,
        may_consult=may_consult,
    )


def _remote_case(
    page: Page, case_id: str, calls: _CaseCalls, errors: dict[str, dict[str, str]], status: int
) -> Response:
    """A case neither registered nor handled here (a child's, known by its supervision or consultations)."""
    registering = case_id.split("-", 1)[0]
    return page.render(
        "console/remote_case.html",
        case_id=case_id,
        registering=registering,
        registering_name=page.gateway.regions.display_name(registering) if registering in page.gateway.regions else "",
        may_supervise=page.may(f"{ROUTING}/Supervise"),
        errors=errors.get("supervise", {}),
        consultations=settled(page, calls.video, "consultations"),
        may_consult=False,
        status=status,
    )


def case_page(
    page: Page,
    *,
    errors: dict[str, dict[str, str]] | None = None,
    status: int = 200,
    proposal: list[Any] | None = None,
) -> Response:
    if (redirect := require(page)) is not None:
        return redirect
    case_id = page.request.path_params["case_id"]
    calls = _start_case_calls(page, case_id)
    errors = errors or {}
    case: common_pb2.Case | None = None
    timeline: list[common_pb2.TimelineEntry] = []
    try:
        got = page.client.result(calls.case)
        case, timeline = got.case, list(got.timeline)
    except CallFailed as failure:
        if failure.status != 404:
            raise
    order = _current_work_order(page, case_id, calls.orders)
    supervisions = list(page.client.result(calls.orders).supervisions)
    if case is None and order is None and not supervisions:
        return _remote_case(page, case_id, calls, errors, status)
    principal = page.operator.principal if page.operator else None
    leaders = settled(page, calls.video, "leaders")
    return page.render(
        "console/case.html",
        may_consult=calls.may_consult,
        consultations=settled(page, calls.video, "consultations"),
        consult_rooms=settled(page, calls.video, "rooms"),
        consult_rows=CONSULT_ROWS,
        consult_errors={k: v for a in CONSULT_ACTIONS for k, v in errors.get(a, {}).items()},
        proposal=proposal,
        may_book=calls.may_book,
        leader=calls.leader,
        leaders=leaders,
        leader_names={item.leader_id: item.leader_name for item in leaders},
        slots=settled(page, calls.slots, "slots"),
        visits=settled(page, calls.video, "visits"),
        status=status,
        case_id=case_id,
        case=case,
        timeline=timeline,
        order=order,
        deadlines=[deadline_view(page, d) for d in (order.deadlines if order else [])],
        supervisions=supervisions,
        forms=forms_for(page, order),
        owing=owing_units(page, order) if order else [],
        now=datetime.now(UTC),
        may_supervise=page.may(f"{ROUTING}/Supervise"),
        errors=errors,
        values=dict(page.form),
        sees_identity=bool(principal and principal.has_any(OFFICE)),
    )


def _book_visit(page: Page, case_id: str) -> None:
    assert page.operator is not None
    starts = starts_at(page)
    page.call(
        page.client.video.BookVisit,
        video_pb2.BookVisitRequest(
            case_id=case_id, actor=page.operator.principal.subject, leader_id=page.field("leader_id"), starts_at=starts
        ),
    )


def case_act(page: Page) -> Response:
    if (redirect := require(page)) is not None:
        return redirect
    case_id = page.request.path_params["case_id"]
    action = page.field("action")
    try:
        if action == "supervise":
            _supervise(page, case_id)
            page.flash("督办已发出。")
            return page.redirect(f"/console/case/{case_id}")
        if action == "book_visit":
            _book_visit(page, case_id)
            page.flash("视频接访已预约。")
            return page.redirect(f"/console/case/{case_id}")
        if action in CONSULT_ACTIONS:
            return _consultation_act(page, case_id, action)
        form = FORMS_BY_ACTION.get(action)
        order = _current_work_order(page, case_id)
        if form is None or order is None or order.work_order_id != page.field("work_order_id"):
            return case_page(page, errors={"_": {"form": "该事项已发生变化，请核对后重试。"}})
        page.call(getattr(page.client.routing, form.call), form.build(order, page, action))
    except CallFailed as failure:
        if failure.status == 400:
            field = labels.form_field(failure.field) or "form"
            return case_page(page, errors={action: {field: labels.field_error(failure.message.split(": ", 1)[-1])}})
        if failure.status == 409:
            return case_page(page, errors={"_": {"form": labels.field_error(failure.message)}})
        raise
    page.flash(f"已{FORMS_BY_ACTION[action].label}。")
    return page.redirect(f"/console/case/{case_id}")


def _consultation_act(page: Page, case_id: str, action: str) -> Response:
    """远程会商: propose the earliest common slots (the page again, with them), book one, move it to the
    next common slot, record minutes."""
    try:
        if action == "propose_consultation":
            return case_page(page, proposal=propose_consultation(page))
        if action == "book_consultation":
            book_consultation(page, case_id)
            page.flash("远程会商已预约。")
        elif action == "reschedule_consultation":
            reschedule_consultation(page)
            page.flash("远程会商已改期。")
        else:
            record_minutes(page)
            page.flash("会商纪要已记录。")
    except CallFailed as failure:
        if failure.status in (400, 409, 503):
            return case_page(page, errors={action: {"form": consultation_error(failure)}})
        raise
    return page.redirect(f"/console/case/{case_id}")


def _supervise(page: Page, case_id: str) -> None:
    days = to_int(page.field("days")) or 5
    due = Timestamp()
    due.FromDatetime(datetime.now(UTC) + timedelta(days=days))
    assert page.operator is not None
    page.call(
        page.client.routing.Supervise,
        routing_pb2.SuperviseRequest(
            case_id=case_id,
            actor=page.operator.principal.subject,
            level=page.field("level"),
            demand=page.field("demand"),
            due_at=due,
        ),
    )
