"""What every console page shares: the services' names, the sign-in check, small form and call helpers."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from lianxin.common.v1 import common_pb2
from starlette.responses import Response

from services.web import labels
from services.web.app import Page, workdays_left
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


def deadline_view(page: Page, deadline: common_pb2.Deadline) -> dict[str, Any]:
    """A work order's deadline as the pages show it: its kind in Chinese and the working days left."""
    return {
        "kind": labels.DEADLINE_LABELS.get(deadline.kind, deadline.kind),
        "due": deadline.due_at,
        "overdue": deadline.overdue,
        "workdays": workdays_left(page.gateway, deadline.due_at),
    }
