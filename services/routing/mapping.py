"""Translation between routing's domain objects and the protobuf contract (adapters only): work orders,
supervisions, the 第三方评价 sample, page tokens, calendar uploads and years."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from lianxin.common.v1 import common_pb2
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2

from services.common.calendar import OfficialYear, check_calendar_text
from services.common.calendar_store import NodeCalendar
from services.common.errors import InvalidArgument
from services.common.security import OFFICE, current_principal
from services.common.timeutil import from_duration, to_timestamp, to_utc
from services.routing.domain import State, allowed_actions
from services.routing.evaluation import EvaluationSample
from services.routing.handlers import FAR_FUTURE, SampleView, StoredWorkOrder, Supervision, WorkOrderQuery
from services.routing.inbox import InboxRow

DEFAULT_PAGE, MAX_PAGE = 50, 500
T = TypeVar("T")


# Each state's wire value, looked up once (CaseState.Value by name per message was a share of a list's CPU).
_STATE_VALUES: dict[State, common_pb2.CaseState.ValueType] = {
    s: common_pb2.CaseState.Value(f"CASE_STATE_{s.value}") for s in State
}


def state_value(state: State | None) -> common_pb2.CaseState.ValueType:
    return _STATE_VALUES[state] if state else common_pb2.CASE_STATE_UNSPECIFIED


def domain_state(value: common_pb2.CaseState.ValueType) -> State:
    try:
        name = common_pb2.CaseState.Name(value).removeprefix("CASE_STATE_")
    except ValueError:
        raise InvalidArgument("states", f"unknown state value {value}") from None
    try:
        return State(name)
    except ValueError:
        raise InvalidArgument("states", f"{name} is not a work-order state") from None


def acting_unit() -> str:
    """The handling unit the caller acts as, when it is one: a unit's operator acts on its own unit's
    cases only. "" for the node's office (clerk, supervisor, admin roles act for the whole node) and
    when tokens are off."""
    principal = current_principal()
    if principal is None or principal.kind != "operator" or principal.has_any(OFFICE):
        return ""
    return principal.unit


def work_order_query(
    request: routing_pb2.ListWorkOrdersRequest | routing_pb2.ListInboxRequest, now: datetime
) -> WorkOrderQuery:
    """The filters of a work order list (ListWorkOrders) or of an inbox (ListInbox: the same filters
    less a case, a due window and histories)."""
    listing = request if isinstance(request, routing_pb2.ListWorkOrdersRequest) else None
    due_before = None
    if listing is not None and listing.HasField("due_within"):
        within = from_duration(listing.due_within, "due_within")
        if within is None:
            raise InvalidArgument("due_within", "must be positive")
        due_before = now + within
    for extra in ("with_history", "with_supervisions"):
        if listing is not None and getattr(listing, extra) and not listing.case_id:
            raise InvalidArgument(extra, "only with case_id (one case's work orders)")
    return WorkOrderQuery(
        unit_id=request.unit_id,
        case_id=listing.case_id if listing is not None else "",
        assisting_unit_id=request.assisting_unit_id,
        states=tuple(domain_state(s) for s in request.states),
        overdue_only=request.overdue_only,
        due_before=due_before,
        now=now,
        with_history=listing is not None and listing.with_history,
    )


def deadline_messages(
    deadlines: dict[str, datetime], windows: dict[str, datetime], now: datetime | None
) -> list[common_pb2.Deadline]:
    """Deadlines and windows by kind; a deadline (not a window) is overdue once passed."""
    return [
        common_pb2.Deadline(
            kind=k, due_at=to_timestamp(v), overdue=bool(now is not None and k in deadlines and v < now)
        )
        for k, v in sorted({**deadlines, **windows}.items())
    ]


def inbox_item_message(row: InboxRow, *, now: datetime) -> routing_pb2.InboxItem:
    return routing_pb2.InboxItem(
        work_order_id=row.work_order_id,
        case_id=row.case_id,
        title=row.title,
        category=row.category,
        state=state_value(row.state),
        unit_id=row.unit_id,
        deadlines=deadline_messages(row.deadlines, row.windows, now),
    )


def inbox_page(found: list[InboxRow], limit: int) -> tuple[list[InboxRow], str]:
    """A page of an inbox: the order and tokens of ``work_order_page``."""
    return page_of(found, limit, lambda r: page_token(r.next_due, r.work_order_id))


def work_order_message(stored: StoredWorkOrder, *, now: datetime | None = None) -> routing_pb2.WorkOrder:
    order = stored.order
    return routing_pb2.WorkOrder(
        work_order_id=order.id,
        case_id=order.case_id,
        node=order.node,
        unit_id=order.unit_id or "",
        category=order.category or "",
        region_code=order.region_code or "",
        state=state_value(order.state),
        deadlines=deadline_messages(order.deadlines, order.windows, now),
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
                from_state=state_value(h.from_state),
                to_state=state_value(h.to_state),
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


def page_size(page: common_pb2.PageRequest) -> int:
    if page.page_size < 0:
        raise InvalidArgument("page.page_size", "must be >= 0")
    return min(page.page_size or DEFAULT_PAGE, MAX_PAGE)


def page_token(at: datetime, key: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([to_utc(at).isoformat(), key]).encode()).decode()


def page_of(found: list[T], limit: int, key: Callable[[T], str]) -> tuple[list[T], str]:
    """The first ``limit`` of ``found`` (fetched with one more, to know whether a next page exists) and
    the token of the next page, "" when this is the last."""
    more = len(found) > limit
    found = found[:limit]
    return found, key(found[-1]) if more else ""


def work_order_page(found: list[StoredWorkOrder], limit: int) -> tuple[list[StoredWorkOrder], str]:
    """A page of work orders, listed by next due date (none last) and id."""
    return page_of(found, limit, lambda s: page_token(s.next_due or FAR_FUTURE, s.order.id))


def from_page_token(token: str) -> tuple[datetime, str] | None:
    if not token:
        return None
    try:
        at, key = json.loads(base64.urlsafe_b64decode(token.encode()))
        return to_utc(datetime.fromisoformat(at)), str(key)
    except (ValueError, TypeError):
        raise InvalidArgument("page.page_token", "not a token from a previous page") from None


def sample_token(unit_id: str, rank: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([unit_id, rank]).encode()).decode()


def from_sample_token(token: str) -> tuple[str, int] | None:
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


def rating_name(value: int) -> str:
    """The proto rating as the domain names it ("" for unspecified or unknown: refused there)."""
    if value == common_pb2.SATISFACTION_UNSPECIFIED or value not in common_pb2.Satisfaction.values():
        return ""
    return common_pb2.Satisfaction.Name(common_pb2.Satisfaction.ValueType(value)).removeprefix("SATISFACTION_")


def sample_message(sample: EvaluationSample) -> routing_pb2.EvaluationSample:
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


def item_message(view: SampleView) -> routing_pb2.EvaluationItem:
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


def significant(code: str) -> str:
    while code.endswith("00") and len(code) > 2:
        code = code[:-2]
    return code
