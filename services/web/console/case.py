"""The case page: the case, its work order with the forms allowed now, supervision, video visits, 远程会商."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

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

Response_ = TypeVar("Response_")


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
    if unit := _ask_as_assisting(page, found):
        found = page.call(listing, _case_orders(case_id, unit)).work_orders
    return _latest(found)


def _ask_as_assisting(page: Page, found: Sequence[routing_pb2.WorkOrder]) -> str:
    """The unit to ask again as when the first listing found nothing ("": no second call): a unit's
    operator lists its own unit's work orders only; where it assists (协办) it asks as that unit."""
    unit = page.operator.principal.unit if page.operator else ""
    return unit if not found else ""


def _latest(found: Sequence[routing_pb2.WorkOrder]) -> routing_pb2.WorkOrder | None:
    if not found:
        return None
    latest: routing_pb2.WorkOrder = max(found, key=lambda w: (w.created_at.seconds, w.created_at.nanos))
    return latest


@dataclass(frozen=True)
class _Choices:
    leader: str  # the leader whose free slots the page shows ("": none chosen)
    may_book: bool
    may_consult: bool


def _choices(page: Page) -> _Choices:
    leader = page.query("leader")[:64] or page.field("leader_id")
    return _Choices(leader, page.may(f"{VIDEO}/BookVisit"), page.may(f"{VIDEO}/BookConsultation"))


def _video_request(case_id: str, chosen: _Choices) -> video_pb2.GetCaseVideoRequest:
    # Video's four lists in one call (visits, consultations, receiving leaders, rooms).
    return video_pb2.GetCaseVideoRequest(case_id=case_id, with_leaders=chosen.may_book, with_rooms=chosen.may_consult)


def _slots_request(chosen: _Choices) -> video_pb2.ListSlotsRequest | None:
    return (
        video_pb2.ListSlotsRequest(leader_id=chosen.leader, max_items=8) if chosen.may_book and chosen.leader else None
    )


@dataclass(frozen=True)
class _CaseAnswers:
    """What the case page's calls answered; a part that failed is empty (the video section)."""

    chosen: _Choices
    case: common_pb2.Case | None  # None: not registered here (NOT_FOUND)
    timeline: list[common_pb2.TimelineEntry]
    order: routing_pb2.WorkOrder | None
    supervisions: list[Any]
    video: video_pb2.GetCaseVideoResponse
    slots: list[Any]


def _answers(page: Page, case_id: str) -> _CaseAnswers:
    """The case page's calls from a worker thread, every one that needs nothing from another started
    before the first answer."""
    client, token, chosen = page.client, page.token, _choices(page)
    slots = _slots_request(chosen)
    case = client.start(client.intake.GetCase, intake_pb2.GetCaseRequest(case_id=case_id), token)
    orders = client.start(client.routing.ListWorkOrders, _case_orders(case_id, supervisions=True), token)
    video = client.start(client.video.GetCaseVideo, _video_request(case_id, chosen), token)
    slotted = client.start(client.video.ListSlots, slots, token) if slots is not None else None
    got = _found(_settle(lambda: page.client.result(case)))
    order = _current_work_order(page, case_id, orders)
    return _CaseAnswers(
        chosen=chosen,
        case=got.case if got else None,
        timeline=list(got.timeline) if got else [],
        order=order,
        supervisions=list(page.client.result(orders).supervisions),
        video=_part(_settle(lambda: page.client.result(video)), video_pb2.GetCaseVideoResponse),
        slots=settled(page, slotted, "slots"),
    )


async def _answers_async(page: Page, case_id: str) -> _CaseAnswers:
    """``_answers`` on the event loop: the calls at once (asyncio.gather over grpc.aio), no thread."""
    chosen = _choices(page)
    slots = _slots_request(chosen)
    parts: list[tuple[str, str, Any, Any]] = [
        ("intake", "GetCase", intake_pb2.GetCaseRequest(case_id=case_id), intake_pb2.GetCaseResponse),
        ("routing", "ListWorkOrders", _case_orders(case_id, supervisions=True), routing_pb2.ListWorkOrdersResponse),
        ("video", "GetCaseVideo", _video_request(case_id, chosen), video_pb2.GetCaseVideoResponse),
        *([("video", "ListSlots", slots, video_pb2.ListSlotsResponse)] if slots is not None else []),
    ]
    # One call to the node for all of them where it serves the three services in one process.
    together: tuple[list[Any] | BaseException, Any] = await asyncio.gather(
        page.aread_together(parts),
        page.gateway.units_async(),  # the template's unit names, kept: it then asks nothing
        return_exceptions=True,
    )
    answered = together[0]
    if isinstance(answered, BaseException):
        raise answered
    got, orders, video, slotted = (*answered, None)[:4]
    case_reply = _found(got)
    if isinstance(orders, BaseException):
        raise orders
    found = list(orders.work_orders)
    if unit := _ask_as_assisting(page, found):
        found = list((await page.acall("routing", "ListWorkOrders", _case_orders(case_id, unit))).work_orders)
    return _CaseAnswers(
        chosen=chosen,
        case=case_reply.case if case_reply else None,
        timeline=list(case_reply.timeline) if case_reply else [],
        order=_latest(found),
        supervisions=list(orders.supervisions),
        video=_part(video, video_pb2.GetCaseVideoResponse),
        slots=list(_part(slotted, video_pb2.ListSlotsResponse).slots),
    )


def _settle(result: Callable[[], Any]) -> Any:
    """A started call's answer, or the CallFailed it raised (as asyncio.gather's return_exceptions)."""
    try:
        return result()
    except CallFailed as failure:
        return failure


def _found(answer: Any) -> intake_pb2.GetCaseResponse | None:
    """GetCase's answer; None when the case is not registered here; any other failure raised."""
    if isinstance(answer, CallFailed) and answer.status == 404:
        return None
    if isinstance(answer, BaseException):
        raise answer
    reply: intake_pb2.GetCaseResponse = answer
    return reply


def _part(answer: Any, empty: Callable[[], Response_]) -> Response_:
    """A page part's answer; empty when its call failed (the rest of the page still shows)."""
    if isinstance(answer, CallFailed) or answer is None:
        return empty()
    if isinstance(answer, BaseException):
        raise answer
    reply: Response_ = answer
    return reply


def _remote_case(
    page: Page, case_id: str, answers: _CaseAnswers, errors: dict[str, dict[str, str]], status: int
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
        consultations=list(answers.video.consultations),
        may_consult=False,
        status=status,
    )


async def case_view(page: Page) -> Response:
    """The case page (GET) on the event loop, its calls at once through grpc.aio (issue 17)."""
    if (redirect := require(page)) is not None:
        return redirect
    case_id = page.request.path_params["case_id"]
    return _render_case(page, case_id, await _answers_async(page, case_id))


def case_page(
    page: Page,
    *,
    errors: dict[str, dict[str, str]] | None = None,
    status: int = 200,
    proposal: list[Any] | None = None,
) -> Response:
    """The case page again from a form's worker thread, with the form's errors or a proposal."""
    if (redirect := require(page)) is not None:
        return redirect
    case_id = page.request.path_params["case_id"]
    return _render_case(page, case_id, _answers(page, case_id), errors=errors, status=status, proposal=proposal)


def _render_case(
    page: Page,
    case_id: str,
    answers: _CaseAnswers,
    *,
    errors: dict[str, dict[str, str]] | None = None,
    status: int = 200,
    proposal: list[Any] | None = None,
) -> Response:
    errors = errors or {}
    case, order, video, chosen = answers.case, answers.order, answers.video, answers.chosen
    if case is None and order is None and not answers.supervisions:
        return _remote_case(page, case_id, answers, errors, status)
    principal = page.operator.principal if page.operator else None
    leaders = list(video.leaders)
    return page.render(
        "console/case.html",
        may_consult=chosen.may_consult,
        consultations=list(video.consultations),
        consult_rooms=list(video.rooms),
        consult_rows=CONSULT_ROWS,
        consult_errors={k: v for a in CONSULT_ACTIONS for k, v in errors.get(a, {}).items()},
        proposal=proposal,
        may_book=chosen.may_book,
        leader=chosen.leader,
        leaders=leaders,
        leader_names={item.leader_id: item.leader_name for item in leaders},
        slots=answers.slots,
        visits=list(video.visits),
        status=status,
        case_id=case_id,
        case=case,
        timeline=answers.timeline,
        order=order,
        deadlines=[deadline_view(page, d) for d in (order.deadlines if order else [])],
        supervisions=answers.supervisions,
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
