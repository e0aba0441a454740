"""The inbox (主办/协办), the leader's queue (领导批示) and the moderation queue (待审核)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from starlette.responses import Response

from services.web.app import Page
from services.web.client import CallFailed
from services.web.console.common import INTAKE, PAGE_SIZE, ROUTING, DeadlineView, deadline_view, require

INBOX_STATES = ("REGISTERED", "ASSIGNED", "IN_PROGRESS", "OBJECTED", "EXTENDED", "REPLIED", "REOPENED", "CLOSED")
# 待办: what still needs someone, the inbox's default; "all" adds what is done with.
OPEN_STATES = INBOX_STATES[:-1]
# A row of a list: an inbox's InboxItem or a queue's WorkOrder (the fields the list shows are named alike).
WorkOrderLike = routing_pb2.InboxItem | routing_pb2.WorkOrder


@dataclass(slots=True)
class Row:
    """A list's row as its template reads it (``r.wo``, ``r.title``): attributes, not dict keys, since
    Jinja tries ``getattr`` first and a dict's missing attribute costs an exception per read (issue 17)."""

    wo: WorkOrderLike
    title: str
    deadline: DeadlineView | None
    item: Any = None  # the leader queue's entry


def next_deadline(page: Page, order: WorkOrderLike, *, kind: str = "") -> DeadlineView | None:
    chosen = [d for d in order.deadlines if not kind or d.kind == kind]
    pending = sorted(chosen, key=lambda d: (not d.overdue, d.due_at.seconds))
    if not pending:
        return None
    return deadline_view(page, pending[0])


async def inbox(page: Page) -> Response:
    """On the event loop (grpc.aio): the busiest console page needs no worker thread (issue 17)."""
    if (redirect := require(page)) is not None:
        return redirect
    if not page.may(f"{ROUTING}/ListInbox") and page.may(f"{ROUTING}/ListEvaluationSample"):
        return page.redirect("/console/evaluation")  # 第三方评价组: its sample is all it sees
    state = page.query("state")
    overdue = page.query("overdue") == "1"
    # 协办 tab: the work orders that wait for the operator's unit's answer as an assisting unit.
    assist = page.query("tab") == "assist"
    assisting_unit = (page.operator.principal.unit if page.operator else "") if assist else ""
    request = routing_pb2.ListInboxRequest(
        overdue_only=overdue,
        assisting_unit_id=assisting_unit,
        page=common_pb2.PageRequest(page_size=PAGE_SIZE, page_token=page.query("page")),
    )
    wanted = [state] if state in INBOX_STATES else [] if state == "all" or assist else list(OPEN_STATES)
    request.states.extend(common_pb2.CaseState.Value(f"CASE_STATE_{s}") for s in wanted)
    if assist and not assisting_unit:
        # The office is no assisting unit: its tab is empty rather than every work order.
        reply = routing_pb2.ListInboxResponse()
    else:
        # One call: the rows as the list shows them, with the titles routing keeps (no call to intake).
        reply = await page.acall("routing", "ListInbox", request)
    orders = list(reply.items)
    titles, missing = known_titles(orders)
    if missing:
        with contextlib.suppress(CallFailed):
            titles.update(case_titles(await page.acall("intake", "ListCases", _cases_request(missing))))
    await page.gateway.units_async()  # the rows' unit names, kept: the template then asks nothing
    return page.render(
        "console/inbox.html",
        rows=rows_of(page, orders, titles),
        states=INBOX_STATES,
        state=state,
        overdue=overdue,
        assist=assist,
        assisting_unit=assisting_unit,
        next_page=reply.page.next_page_token,
        total=reply.page.total_size if not assist or assisting_unit else 0,
    )


def titled_rows(page: Page, orders: Sequence[WorkOrderLike]) -> list[Row]:
    """Rows with their cases' titles and next deadline: an inbox row's own title (routing's copy of
    the case); the others' from intake, a page's in one call."""
    titles, missing = known_titles(orders)
    if missing:
        with contextlib.suppress(CallFailed):
            titles.update(case_titles(page.call(page.client.intake.ListCases, _cases_request(missing))))
    return rows_of(page, orders, titles)


def known_titles(orders: Sequence[WorkOrderLike]) -> tuple[dict[str, str], list[str]]:
    """The titles routing sent with an inbox's rows, and the cases whose title intake must give."""
    titles = {o.case_id: o.title for o in orders if isinstance(o, routing_pb2.InboxItem) and o.title}
    return titles, sorted({o.case_id for o in orders} - titles.keys())


def _cases_request(case_ids: list[str]) -> intake_pb2.ListCasesRequest:
    return intake_pb2.ListCasesRequest(case_ids=case_ids, page=common_pb2.PageRequest(page_size=len(case_ids)))


def case_titles(reply: intake_pb2.ListCasesResponse) -> dict[str, str]:
    return {case.case_id: case.title for case in reply.cases}


def rows_of(page: Page, orders: Sequence[WorkOrderLike], titles: dict[str, str]) -> list[Row]:
    return [Row(wo, titles.get(wo.case_id, ""), next_deadline(page, wo)) for wo in orders]


def leader_queue(page: Page) -> Response:
    """领导批示: the cases of the node's leader classes that wait for an instruction, most urgent first."""
    if (redirect := require(page)) is not None:
        return redirect
    reply = page.call(
        page.client.routing.ListLeaderQueue,
        routing_pb2.ListLeaderQueueRequest(
            page=common_pb2.PageRequest(page_size=PAGE_SIZE, page_token=page.query("page"))
        ),
    )
    items = list(reply.items)
    rows = titled_rows(page, [item.work_order for item in items])
    for row, item in zip(rows, items, strict=True):
        row.item = item
        # The queue's time limit is the "instruct" deadline; other duties wait behind it.
        row.deadline = next_deadline(page, item.work_order, kind="instruct") or row.deadline
    return page.render(
        "console/leader.html",
        rows=rows,
        next_page=reply.page.next_page_token,
        may_instruct=page.may(f"{ROUTING}/RecordInstruction"),
    )


def moderation(page: Page) -> Response:
    if (redirect := require(page)) is not None:
        return redirect
    reply = page.call(
        page.client.intake.ListModerationQueue,
        intake_pb2.ListModerationQueueRequest(page=common_pb2.PageRequest(page_size=PAGE_SIZE)),
    )
    return page.render(
        "console/moderation.html", items=reply.items, may_release=page.may(f"{INTAKE}/ReleaseModeratedCase")
    )


def moderate(page: Page) -> Response:
    if (redirect := require(page)) is not None:
        return redirect
    decision = (
        intake_pb2.MODERATION_DECISION_RELEASE
        if page.field("decision") == "release"
        else intake_pb2.MODERATION_DECISION_REJECT
    )
    assert page.operator is not None
    page.call(
        page.client.intake.ReleaseModeratedCase,
        intake_pb2.ReleaseModeratedCaseRequest(
            case_id=page.request.path_params["case_id"],
            decision=decision,
            note=page.field("note"),
            actor=page.operator.principal.subject,
        ),
    )
    page.flash("已处理。")
    return page.redirect("/console/moderation")
