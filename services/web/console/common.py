"""What every console page shares: the services' names, the sign-in check, small form and call helpers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from lianxin.common.v1 import common_pb2
from markupsafe import escape
from starlette.responses import Response

from services.web import labels
from services.web.app import CHINA, Page
from services.web.client import CallFailed

PAGE_SIZE = 20
ROUTING = "lianxin.routing.v1.RoutingService"
INTAKE = "lianxin.intake.v1.IntakeService"
EXCHANGE = "lianxin.exchange.v1.ExchangeService"
VIDEO = "lianxin.video.v1.VideoService"


def require(page: Page) -> Response | None:
    if page.operator is None:
        return page.redirect("/console/login")
    return None


def to_int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


def settled(page: Page, future: Any, attr: str) -> list[Any]:
    """The list ``attr`` of a started call's answer; empty when the call failed (a part of a page)."""
    if future is None:
        return []
    try:
        return list(getattr(page.client.result(future), attr))
    except CallFailed:
        return []


def starts_at(page: Page) -> Timestamp:
    """The slot a form chose (its start as RFC 3339)."""
    starts = Timestamp()
    try:
        starts.FromJsonString(page.field("starts_at"))
    except ValueError:
        raise CallFailed(grpc.StatusCode.INVALID_ARGUMENT, "starts_at: must be set", "starts_at") from None
    return starts


@dataclass(frozen=True, slots=True)
class DeadlineView:
    """A work order's deadline as the pages show it: its kind in Chinese, the due day and the working
    days left. Attributes, not a dict: Jinja reads ``d.kind`` by ``getattr`` first, and a dict's
    missing attribute costs an AttributeError on every read (issue 17)."""

    kind: str
    due: Timestamp
    day: str  # the due day in China, "%m-%d" ("" for an unset time, as the local_time filter)
    overdue: bool
    workdays: int | None

    def __html__(self) -> str:
        """The deadline in a list's row or on the case page (``{{ d }}``): a span, red when overdue.

        Written here rather than as a template macro: a list calls it once a row, and a Jinja macro
        call (its arguments, a new context, a generator) cost more than the row's other cells together.
        """
        if self.overdue:
            note = "（已超期）" if self.workdays is None else f"（已超期 {-self.workdays} 个工作日）"
        else:
            note = "" if self.workdays is None else f"（剩 {self.workdays} 个工作日）"
        late = " overdue" if self.overdue else ""
        return f'<span class="deadline{late}">{escape(self.kind)} {escape(self.day)}{note}</span>'


def deadline_view(page: Page, deadline: common_pb2.Deadline) -> DeadlineView:
    """The deadline's due time read once for both its day and its working days left (调休-aware;
    None when the calendar lacks the year)."""
    due_at = deadline.due_at
    # The day is the whole seconds' (nanos are never negative), so no Timestamp.ToDatetime in Python.
    due = datetime.fromtimestamp(due_at.seconds, CHINA)
    unset = due_at.seconds == 0 and due_at.nanos == 0
    return DeadlineView(
        kind=labels.DEADLINE_LABELS.get(deadline.kind, deadline.kind),
        due=due_at,
        day="" if unset else due.strftime("%m-%d"),
        overdue=deadline.overdue,
        workdays=page.gateway.workdays_until(datetime.now(CHINA).date(), due.date()),
    )
