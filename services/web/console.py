"""The operator console: sign-in, inbox, moderation, case page with its actions, dashboard, exchange desk.

Every call carries the operator's token, so the node decides scope and roles; a page only offers
the actions the work order allows now (routing's ``allowed_actions``) that the operator's roles pass.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from lianxin.common.v1 import common_pb2
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.stats.v1 import stats_service_pb2 as stats_pb2
from lianxin.video.v1 import video_service_pb2 as video_pb2
from starlette.responses import Response

from services.common.errors import DomainError
from services.common.security import OFFICE, issue_token, verify_token
from services.web import labels
from services.web.app import CHINA, Page, today_month, workdays_left
from services.web.charts import bar_chart
from services.web.client import CallFailed
from services.web.session import Operator

PAGE_SIZE = 20
ROUTING = "lianxin.routing.v1.RoutingService"
INTAKE = "lianxin.intake.v1.IntakeService"
EXCHANGE = "lianxin.exchange.v1.ExchangeService"
VIDEO = "lianxin.video.v1.VideoService"


def _require(page: Page) -> Response | None:
    if page.operator is None:
        return page.redirect("/console/login")
    return None


# --------------------------------------------------------------------------- sign-in


def login_form(page: Page) -> Response:
    return page.render("console/login.html", errors={}, values={})


def login(page: Page) -> Response:
    gw = page.gateway
    token = page.field("token")
    operator: Operator | None = None
    errors: dict[str, str] = {}
    if token:
        if gw.token_key is None:
            errors["token"] = "本节点未配置令牌密钥，请使用账号密码登录。"
        else:
            try:
                operator = Operator(token=token, principal=verify_token(gw.token_key, token))
            except DomainError:
                errors["token"] = "令牌无效或已过期。"
    else:
        account = gw.accounts.authenticate(page.field("username"), page.form.get("password", ""))
        if account is None:
            errors["password"] = "账号或密码不正确。"
        else:
            ttl = gw.settings.session_ttl_s
            # Without a token key (security off at the node) the token only carries the claims.
            key = gw.token_key or gw.signer.key
            minted = issue_token(
                key, subject=account.username, node=account.node, unit=account.unit, roles=account.roles, ttl_s=ttl
            )
            operator = Operator(token=minted, principal=verify_token(key, minted), display_name=account.display_name)
    if operator is None:
        return page.render("console/login.html", errors=errors, values={"username": page.field("username")})
    ttl = max(60, min(gw.settings.session_ttl_s, operator.principal.expires - int(datetime.now(UTC).timestamp())))
    page.cookies.append((gw.cookie("session"), gw.signer.dumps("session", operator.to_cookie(), ttl_s=ttl), ttl))
    return page.redirect("/console")


def logout(page: Page) -> Response:
    page.cookies.append((page.gateway.cookie("session"), "", 0))
    page.flash("您已安全退出。")
    return page.redirect("/console/login")


# --------------------------------------------------------------------------- inbox


INBOX_STATES = ("REGISTERED", "ASSIGNED", "IN_PROGRESS", "OBJECTED", "EXTENDED", "REPLIED", "REOPENED", "CLOSED")
# 待办: what still needs someone, the inbox's default; "all" adds what is done with.
OPEN_STATES = INBOX_STATES[:-1]


def _next_deadline(page: Page, order: routing_pb2.WorkOrder, *, kind: str = "") -> dict[str, Any] | None:
    chosen = [d for d in order.deadlines if not kind or d.kind == kind]
    pending = sorted(chosen, key=lambda d: (not d.overdue, d.due_at.seconds))
    if not pending:
        return None
    d = pending[0]
    return {
        "kind": labels.DEADLINE_LABELS.get(d.kind, d.kind),
        "due": d.due_at,
        "overdue": d.overdue,
        "workdays": workdays_left(page.gateway, d.due_at),
    }


def inbox(page: Page) -> Response:
    if (redirect := _require(page)) is not None:
        return redirect
    if not page.may(f"{ROUTING}/ListWorkOrders") and page.may(f"{ROUTING}/ListEvaluationSample"):
        return page.redirect("/console/evaluation")  # 第三方评价组: its sample is all it sees
    state = page.query("state")
    overdue = page.query("overdue") == "1"
    # 协办 tab: the work orders that wait for the operator's unit's answer as an assisting unit.
    assist = page.query("tab") == "assist"
    assisting_unit = (page.operator.principal.unit if page.operator else "") if assist else ""
    request = routing_pb2.ListWorkOrdersRequest(
        overdue_only=overdue,
        assisting_unit_id=assisting_unit,
        page=common_pb2.PageRequest(page_size=PAGE_SIZE, page_token=page.query("page")),
    )
    wanted = [state] if state in INBOX_STATES else [] if state == "all" or assist else list(OPEN_STATES)
    request.states.extend(common_pb2.CaseState.Value(f"CASE_STATE_{s}") for s in wanted)
    if assist and not assisting_unit:
        # The office is no assisting unit: its tab is empty rather than every work order.
        reply = routing_pb2.ListWorkOrdersResponse()
    else:
        reply = page.call(page.client.routing.ListWorkOrders, request)
    rows = _titled_rows(page, list(reply.work_orders))
    return page.render(
        "console/inbox.html",
        rows=rows,
        states=INBOX_STATES,
        state=state,
        overdue=overdue,
        assist=assist,
        assisting_unit=assisting_unit,
        next_page=reply.page.next_page_token,
        total=reply.page.total_size if not assist or assisting_unit else 0,
    )


def _titled_rows(page: Page, orders: list[routing_pb2.WorkOrder]) -> list[dict[str, Any]]:
    """Work orders with their cases' titles (from intake, a page's in one call) and next deadline."""
    titles: dict[str, str] = {}
    case_ids = sorted({wo.case_id for wo in orders})
    if case_ids:
        try:
            cases = page.call(
                page.client.intake.ListCases,
                intake_pb2.ListCasesRequest(case_ids=case_ids, page=common_pb2.PageRequest(page_size=len(case_ids))),
            ).cases
            titles = {case.case_id: case.title for case in cases}
        except CallFailed:
            titles = {}
    return [{"wo": wo, "title": titles.get(wo.case_id, ""), "deadline": _next_deadline(page, wo)} for wo in orders]


def leader_queue(page: Page) -> Response:
    """领导批示: the cases of the node's leader classes that wait for an instruction, most urgent first."""
    if (redirect := _require(page)) is not None:
        return redirect
    reply = page.call(
        page.client.routing.ListLeaderQueue,
        routing_pb2.ListLeaderQueueRequest(
            page=common_pb2.PageRequest(page_size=PAGE_SIZE, page_token=page.query("page"))
        ),
    )
    items = list(reply.items)
    rows = _titled_rows(page, [item.work_order for item in items])
    for row, item in zip(rows, items, strict=True):
        row["item"] = item
        # The queue's time limit is the "instruct" deadline; other duties wait behind it.
        row["deadline"] = _next_deadline(page, item.work_order, kind="instruct") or row["deadline"]
    return page.render(
        "console/leader.html",
        rows=rows,
        next_page=reply.page.next_page_token,
        may_instruct=page.may(f"{ROUTING}/RecordInstruction"),
    )


# --------------------------------------------------------------------------- 第三方评价

# The rating form's values → the contract's Satisfaction.
RATING_VALUES: dict[str, common_pb2.Satisfaction.ValueType] = {
    "satisfied": common_pb2.SATISFACTION_SATISFIED,
    "basically": common_pb2.SATISFACTION_BASICALLY_SATISFIED,
    "unsatisfied": common_pb2.SATISFACTION_UNSATISFIED,
}


# The fields each form of the page shows an error beside; any other error goes above the form.
EVALUATION_FIELDS: dict[str, tuple[str, ...]] = {"rate": ("rating", "comment"), "draw": ("seed", "percent", "minimum")}


def evaluation(page: Page, *, errors: dict[str, dict[str, str]] | None = None, month: str = "") -> Response:
    """第三方评价: the month's sample as the evaluation group sees it (masked), a rating form per case
    not rated yet; the office's supervisor draws the month's sample here."""
    if (redirect := _require(page)) is not None:
        return redirect
    month = month or page.query("month") or today_month()
    sample: routing_pb2.ListEvaluationSampleResponse | None = None
    try:
        sample = page.call(
            page.client.routing.ListEvaluationSample,
            routing_pb2.ListEvaluationSampleRequest(
                month=month, page=common_pb2.PageRequest(page_size=100, page_token=page.query("page"))
            ),
        )
    except CallFailed as failure:
        if failure.status not in (400, 404):
            raise
        if failure.status == 400:  # a month typed wrong in the address
            errors = {**(errors or {}), "month": {"month": labels.field_error(failure.message)}}
    return page.render(
        "console/evaluation.html",
        month=month,
        sample=sample.sample if sample is not None and sample.sample.month else None,
        items=list(sample.items) if sample is not None else [],
        next_page=sample.page.next_page_token if sample is not None else "",
        may_rate=page.may(f"{ROUTING}/RecordThirdPartyRating"),
        may_draw=page.may(f"{ROUTING}/DrawEvaluationSample"),
        errors=errors or {},
        values=dict(page.form),
    )


def evaluation_act(page: Page) -> Response:
    """Record one rating (action "rate") or draw the month's sample (action "draw")."""
    if (redirect := _require(page)) is not None:
        return redirect
    assert page.operator is not None
    month = page.field("month")
    action = page.field("action")
    key = page.field("case_id") if action == "rate" else "draw"
    try:
        if action == "rate":
            page.call(
                page.client.routing.RecordThirdPartyRating,
                routing_pb2.RecordThirdPartyRatingRequest(
                    month=month,
                    case_id=page.field("case_id"),
                    actor=page.operator.principal.subject,
                    rating=RATING_VALUES.get(page.field("rating"), common_pb2.SATISFACTION_UNSPECIFIED),
                    comment=page.field("comment"),
                ),
            )
            page.flash("评价已记录。")
        elif action == "draw":
            page.call(
                page.client.routing.DrawEvaluationSample,
                routing_pb2.DrawEvaluationSampleRequest(
                    month=month,
                    seed=page.field("seed"),
                    percent=_int(page.field("percent")),
                    minimum=_int(page.field("minimum")),
                    actor=page.operator.principal.subject,
                ),
            )
            page.flash(f"{month} 样本已抽取。")
        else:
            return page.redirect("/console/evaluation")
    except CallFailed as failure:
        if failure.status in (400, 404, 409):
            field = labels.form_field(failure.field) if failure.status == 400 and failure.field else "form"
            if field not in EVALUATION_FIELDS.get(action, ()):
                field = "form"  # shown above the form's fields
            message = labels.field_error(failure.message.split(": ", 1)[-1])
            # 200 with the error beside its field: browsers log a 4xx page load as a console error.
            return evaluation(page, errors={key: {field: message}}, month=month)
        raise
    return page.redirect(f"/console/evaluation?month={month}")


def moderation(page: Page) -> Response:
    if (redirect := _require(page)) is not None:
        return redirect
    reply = page.call(
        page.client.intake.ListModerationQueue,
        intake_pb2.ListModerationQueueRequest(page=common_pb2.PageRequest(page_size=PAGE_SIZE)),
    )
    return page.render(
        "console/moderation.html", items=reply.items, may_release=page.may(f"{INTAKE}/ReleaseModeratedCase")
    )


def moderate(page: Page) -> Response:
    if (redirect := _require(page)) is not None:
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


# --------------------------------------------------------------------------- the case page


@dataclass(frozen=True)
class ActionForm:
    """One action of the transition table as a form: its RPC and the fields a person fills in."""

    action: str
    label: str
    method: str
    fields: tuple[tuple[str, str, str], ...]  # (name, label, kind: text|textarea|number|unit|decision|...)
    build: Callable[[routing_pb2.WorkOrder, Page, str], Any]
    call: str


def _wo(order: routing_pb2.WorkOrder, page: Page) -> dict[str, Any]:
    return {
        "work_order_id": order.work_order_id,
        "actor": page.operator.principal.subject if page.operator else "",
        "expected_version": int(page.field("expected_version") or 0),
    }


ACTION_FORMS: tuple[ActionForm, ...] = (
    ActionForm(
        "accept",
        "受理",
        f"{ROUTING}/AcceptWorkOrder",
        (("note", "说明（可选）", "text"),),
        lambda o, p, _a: routing_pb2.AcceptWorkOrderRequest(**_wo(o, p), note=p.field("note")),
        "AcceptWorkOrder",
    ),
    ActionForm(
        "start",
        "签收办理",
        f"{ROUTING}/AcceptWorkOrder",
        (("note", "说明（可选）", "text"),),
        lambda o, p, _a: routing_pb2.AcceptWorkOrderRequest(**_wo(o, p), note=p.field("note")),
        "AcceptWorkOrder",
    ),
    ActionForm(
        "refuse",
        "不予受理",
        f"{ROUTING}/RefuseWorkOrder",
        (("reason", "不予受理理由（告知信访人）", "textarea"),),
        lambda o, p, _a: routing_pb2.RefuseWorkOrderRequest(**_wo(o, p), reason=p.field("reason")),
        "RefuseWorkOrder",
    ),
    ActionForm(
        "assign",
        "交办承办单位",
        f"{ROUTING}/AssignManually",
        (("unit_id", "承办单位", "unit"), ("reason", "交办意见", "textarea")),
        lambda o, p, _a: routing_pb2.AssignManuallyRequest(
            case_id=o.case_id, actor=_wo(o, p)["actor"], unit_id=p.field("unit_id"), reason=p.field("reason")
        ),
        "AssignManually",
    ),
    ActionForm(
        "object",
        "提出异议",
        f"{ROUTING}/ObjectWorkOrder",
        (("reason", "异议理由", "textarea"), ("suggested_unit_id", "建议承办单位（可选）", "unit")),
        lambda o, p, _a: routing_pb2.ObjectWorkOrderRequest(
            **_wo(o, p), reason=p.field("reason"), suggested_unit_id=p.field("suggested_unit_id")
        ),
        "ObjectWorkOrder",
    ),
    ActionForm(
        "arbitrate",
        "异议裁定",
        f"{ROUTING}/ArbitrateObjection",
        (
            ("decision", "决定", "arbitration"),
            ("unit_id", "改派单位（改派时填写）", "unit"),
            ("reason", "理由", "textarea"),
        ),
        lambda o, p, _a: routing_pb2.ArbitrateObjectionRequest(
            **_wo(o, p),
            decision=routing_pb2.ARBITRATION_DECISION_REASSIGN
            if p.field("decision") == "reassign"
            else routing_pb2.ARBITRATION_DECISION_UPHOLD
            if p.field("decision") == "uphold"
            else routing_pb2.ARBITRATION_DECISION_UNSPECIFIED,
            new_unit_id=p.field("unit_id"),
            reason=p.field("reason"),
        ),
        "ArbitrateObjection",
    ),
    ActionForm(
        "request_extension",
        "申请延期",
        f"{ROUTING}/RequestExtension",
        (("days", "延期天数", "number"), ("reason", "延期理由", "textarea")),
        lambda o, p, _a: routing_pb2.RequestExtensionRequest(
            **_wo(o, p), days=_int(p.field("days")), reason=p.field("reason")
        ),
        "RequestExtension",
    ),
    ActionForm(
        "approve_extension",
        "延期审批",
        f"{ROUTING}/ApproveExtension",
        (("decision", "决定", "approval"), ("reason", "审批意见", "textarea")),
        lambda o, p, _a: routing_pb2.ApproveExtensionRequest(
            **_wo(o, p), approve=p.field("decision") == "approve", reason=p.field("reason")
        ),
        "ApproveExtension",
    ),
    ActionForm(
        "reply",
        "答复信访人",
        f"{ROUTING}/ReplyWorkOrder",
        (("text", "答复内容", "textarea"),),
        lambda o, p, _a: routing_pb2.ReplyWorkOrderRequest(**_wo(o, p), text=p.field("text")),
        "ReplyWorkOrder",
    ),
    ActionForm(
        "close",
        "办结",
        f"{ROUTING}/CloseWorkOrder",
        (("note", "办结说明（可选）", "text"),),
        lambda o, p, _a: routing_pb2.CloseWorkOrderRequest(**_wo(o, p), note=p.field("note")),
        "CloseWorkOrder",
    ),
    ActionForm(
        "reopen",
        "退回重办",
        f"{ROUTING}/ReopenWorkOrder",
        (("reason", "退回理由", "textarea"),),
        lambda o, p, _a: routing_pb2.ReopenWorkOrderRequest(**_wo(o, p), reason=p.field("reason")),
        "ReopenWorkOrder",
    ),
    ActionForm(
        "transfer",
        "上报上级",
        "lianxin.routing.v1.RoutingService/EscalateCase",
        (("reason", "上报理由", "textarea"),),
        lambda o, p, _a: routing_pb2.EscalateCaseRequest(
            case_id=o.case_id, actor=_wo(o, p)["actor"], reason=p.field("reason")
        ),
        "EscalateCase",
    ),
    ActionForm(
        "merge",
        "并单（并入主件）",
        f"{ROUTING}/MergeCases",
        (("main_case_id", "主件编号（本件并入该件）", "text"), ("reason", "并单理由", "textarea")),
        lambda o, p, _a: routing_pb2.MergeCasesRequest(
            main_case_id=p.field("main_case_id"),
            case_ids=[o.case_id],
            actor=_wo(o, p)["actor"],
            reason=p.field("reason"),
        ),
        "MergeCases",
    ),
    ActionForm(
        "unmerge",
        "撤销并单",
        f"{ROUTING}/UnmergeCase",
        (("reason", "撤销理由", "textarea"),),
        lambda o, p, _a: routing_pb2.UnmergeCaseRequest(
            case_id=o.case_id, actor=_wo(o, p)["actor"], reason=p.field("reason")
        ),
        "UnmergeCase",
    ),
    ActionForm(
        "request_assist",
        "请求协办",
        f"{ROUTING}/RequestAssist",
        (("unit_ids", "协办单位（可多选）", "units"), ("request", "协办事项", "textarea")),
        lambda o, p, _a: routing_pb2.RequestAssistRequest(
            **_wo(o, p), unit_ids=_checked(p, "unit_ids_"), request=p.field("request")
        ),
        "RequestAssist",
    ),
    ActionForm(
        "answer_assist",
        "答复主办单位（协办意见）",
        f"{ROUTING}/AnswerAssist",
        (("unit_id", "协办单位", "owing"), ("text", "协办意见", "textarea")),
        lambda o, p, _a: routing_pb2.AnswerAssistRequest(**_wo(o, p), unit_id=p.field("unit_id"), text=p.field("text")),
        "AnswerAssist",
    ),
    ActionForm(
        "instruct",
        "登记领导批示",
        f"{ROUTING}/RecordInstruction",
        (("leader_name", "批示领导姓名", "text"), ("instruction", "批示内容", "textarea")),
        lambda o, p, _a: routing_pb2.RecordInstructionRequest(
            **_wo(o, p), leader_name=p.field("leader_name"), instruction=p.field("instruction")
        ),
        "RecordInstruction",
    ),
    ActionForm(
        "pause",
        "暂停计时",
        f"{ROUTING}/PauseWorkOrder",
        (("reason", "暂停理由（如等待补充材料、听证）", "text"),),
        lambda o, p, _a: routing_pb2.PauseWorkOrderRequest(**_wo(o, p), reason=p.field("reason")),
        "PauseWorkOrder",
    ),
    ActionForm(
        "resume",
        "恢复计时",
        f"{ROUTING}/ResumeWorkOrder",
        (("reason", "说明（可选）", "text"),),
        lambda o, p, _a: routing_pb2.ResumeWorkOrderRequest(**_wo(o, p), reason=p.field("reason")),
        "ResumeWorkOrder",
    ),
)
FORMS_BY_ACTION = {f.action: f for f in ACTION_FORMS}
# The table's approve and reject of an extension are one decision on one form.
ACTION_ALIASES = {"reject_extension": "approve_extension"}


def _checked(page: Page, prefix: str) -> list[str]:
    """The values of a group of checkboxes named ``prefix`` + a suffix (a form field holds one value)."""
    return [str(v).strip() for k, v in page.form.items() if k.startswith(prefix) and str(v).strip()]


# States in which the lead unit may ask assisting units (routing's ASSIST_STATES).
ASSIST_STATES = frozenset({"ASSIGNED", "IN_PROGRESS", "EXTENDED", "REOPENED"})


def _owing_units(page: Page, order: routing_pb2.WorkOrder) -> list[str]:
    """Assisting units that still owe their answer and the operator may answer for: its own unit, or
    any of them for the node's office."""
    principal = page.operator.principal if page.operator else None
    if principal is None:
        return []
    owing = [a.unit_id for a in order.assisting_units if not a.HasField("answered_at")]
    return owing if principal.has_any(OFFICE) else [u for u in owing if u == principal.unit]


def _extra_forms(page: Page, order: routing_pb2.WorkOrder) -> list[str]:
    """Forms that are not transitions of the table (allowed_actions does not list them)."""
    principal = page.operator.principal if page.operator else None
    office = bool(principal and principal.has_any(OFFICE))
    out: list[str] = []
    lead = office or bool(principal and principal.unit == order.unit_id)
    if order.unit_id and labels.state_name(order.state) in ASSIST_STATES and lead:
        out.append("request_assist")
    if _owing_units(page, order):
        out.append("answer_assist")
    if order.leader_class and not order.HasField("instruction"):
        out.append("instruct")
    return out


def _int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


def _start_work_orders(page: Page, case_id: str) -> Any:
    """The case's work orders at this node, asked without waiting (``_current_work_order`` takes it)."""
    return page.client.start(
        page.client.routing.ListWorkOrders,
        routing_pb2.ListWorkOrdersRequest(case_id=case_id, page=common_pb2.PageRequest(page_size=50)),
        page.token,
    )


def _current_work_order(page: Page, case_id: str, started: Any = None) -> routing_pb2.WorkOrder | None:
    found = page.client.result(started or _start_work_orders(page, case_id)).work_orders
    unit = page.operator.principal.unit if page.operator else ""
    if not found and unit:
        # A unit's operator lists its own unit's work orders only; where it assists (协办) it asks as that.
        found = page.call(
            page.client.routing.ListWorkOrders,
            routing_pb2.ListWorkOrdersRequest(
                case_id=case_id, assisting_unit_id=unit, page=common_pb2.PageRequest(page_size=50)
            ),
        ).work_orders
    if not found:
        return None
    latest = max(found, key=lambda w: (w.created_at.seconds, w.created_at.nanos))
    full: routing_pb2.WorkOrder = page.call(
        page.client.routing.GetWorkOrder, routing_pb2.GetWorkOrderRequest(work_order_id=latest.work_order_id)
    ).work_order
    return full


def _forms_for(page: Page, order: routing_pb2.WorkOrder | None) -> list[ActionForm]:
    if order is None:
        return []
    wanted: list[str] = []
    for action in order.allowed_actions:
        name = ACTION_ALIASES.get(action, action)
        if name in FORMS_BY_ACTION and name not in wanted:
            wanted.append(name)
    wanted.extend(_extra_forms(page, order))
    return [FORMS_BY_ACTION[a] for a in wanted if page.may(FORMS_BY_ACTION[a].method)]


def case_page(
    page: Page,
    *,
    errors: dict[str, dict[str, str]] | None = None,
    status: int = 200,
    proposal: list[Any] | None = None,
) -> Response:
    if (redirect := _require(page)) is not None:
        return redirect
    case_id = page.request.path_params["case_id"]
    case_future = page.client.start(page.client.intake.GetCase, intake_pb2.GetCaseRequest(case_id=case_id), page.token)
    supervisions_future = page.client.start(
        page.client.routing.ListSupervisions, routing_pb2.ListSupervisionsRequest(case_id=case_id), page.token
    )
    visits_future = page.client.start(
        page.client.video.ListVisits, video_pb2.ListVisitsRequest(case_id=case_id), page.token
    )
    consultations_future = page.client.start(
        page.client.video.ListConsultations, video_pb2.ListConsultationsRequest(case_id=case_id), page.token
    )
    orders_future = _start_work_orders(page, case_id)
    # Every call of the page that needs nothing from another is on its way before the first answer.
    leader = page.query("leader")[:64] or page.field("leader_id")
    may_book = page.may(f"{VIDEO}/BookVisit")
    leaders_future = (
        page.client.start(page.client.video.ListReceivingLeaders, video_pb2.ListReceivingLeadersRequest(), page.token)
        if may_book
        else None
    )
    slots_future = (
        page.client.start(
            page.client.video.ListSlots, video_pb2.ListSlotsRequest(leader_id=leader, max_items=8), page.token
        )
        if may_book and leader
        else None
    )
    may_consult = page.may(f"{VIDEO}/BookConsultation")
    rooms = video_pb2.ListRoomsRequest()
    rooms_future = page.client.start(page.client.video.ListRooms, rooms, page.token) if may_consult else None
    case: common_pb2.Case | None = None
    timeline: list[common_pb2.TimelineEntry] = []
    try:
        got = page.client.result(case_future)
        case, timeline = got.case, list(got.timeline)
    except CallFailed as failure:
        if failure.status != 404:
            raise
    order = _current_work_order(page, case_id, orders_future)
    supervisions = _settled(page, supervisions_future, "supervisions")
    if case is None and order is None and not supervisions:
        registering = case_id.split("-", 1)[0]
        return page.render(
            "console/remote_case.html",
            case_id=case_id,
            registering=registering,
            registering_name=page.gateway.regions.display_name(registering)
            if registering in page.gateway.regions
            else "",
            may_supervise=page.may(f"{ROUTING}/Supervise"),
            errors=(errors or {}).get("supervise", {}),
            consultations=_settled(page, consultations_future, "consultations"),
            may_consult=False,
            status=status,
        )
    deadlines = [
        {
            "kind": labels.DEADLINE_LABELS.get(d.kind, d.kind),
            "due": d.due_at,
            "overdue": d.overdue,
            "workdays": workdays_left(page.gateway, d.due_at),
        }
        for d in (order.deadlines if order else [])
    ]
    principal = page.operator.principal if page.operator else None
    leaders = _settled(page, leaders_future, "leaders")
    consult_errors = {k: v for a in CONSULT_ACTIONS for k, v in (errors or {}).get(a, {}).items()}
    return page.render(
        "console/case.html",
        may_consult=may_consult,
        consultations=_settled(page, consultations_future, "consultations"),
        consult_rooms=_settled(page, rooms_future, "rooms"),
        consult_rows=CONSULT_ROWS,
        consult_errors=consult_errors,
        proposal=proposal,
        may_book=may_book,
        leader=leader,
        leaders=leaders,
        leader_names={item.leader_id: item.leader_name for item in leaders},
        slots=_settled(page, slots_future, "slots"),
        visits=_settled(page, visits_future, "visits"),
        status=status,
        case_id=case_id,
        case=case,
        timeline=timeline,
        order=order,
        deadlines=deadlines,
        supervisions=supervisions,
        forms=_forms_for(page, order),
        owing=_owing_units(page, order) if order else [],
        now=datetime.now(UTC),
        may_supervise=page.may(f"{ROUTING}/Supervise"),
        errors=errors or {},
        values=dict(page.form),
        sees_identity=bool(principal and principal.has_any(OFFICE)),
    )


# --------------------------------------------------------------------------- 远程会商 on the case page

CONSULT_ROWS = 4  # participant rows on the form: this node's unit and up to three of other tiers
CONSULT_ACTIONS = ("propose_consultation", "book_consultation", "consultation_minutes")
CONSULT_FIELDS = {
    "topic": "会商事项",
    "participants": "参会单位",
    "node": "节点",
    "unit_id": "单位编号",
    "room_id": "会商室",
    "duration_minutes": "时长",
    "starts_at": "时段",
    "minutes": "会商纪要",
    "consultation_id": "会商",
}


def _rooms(page: Page) -> list[Any]:
    """The rooms registered at this node (its own and other nodes'), for the participant rows."""
    try:
        return list(page.call(page.client.video.ListRooms, video_pb2.ListRoomsRequest()).rooms)
    except CallFailed:
        return []


def _participants(page: Page) -> list[video_pb2.ConsultationParticipant]:
    """The participant rows filled in (a room chosen or a unit typed); the room names the node."""
    nodes = {r.room_id: r.node for r in _rooms(page)}
    out = []
    for i in range(1, CONSULT_ROWS + 1):
        room, unit = page.field(f"room_{i}"), page.field(f"unit_{i}")
        if room or unit:
            out.append(video_pb2.ConsultationParticipant(node=nodes.get(room, ""), unit_id=unit, room_id=room))
    return out


def _propose_consultation(page: Page) -> list[Any]:
    if not page.field("topic"):
        raise CallFailed(grpc.StatusCode.INVALID_ARGUMENT, "topic: must be set", "topic")
    reply = page.call(
        page.client.video.ListConsultationSlots,
        video_pb2.ListConsultationSlotsRequest(participants=_participants(page), max_items=3),
    )
    if not reply.slots:
        notice = f"; {reply.calendar_notice}" if reply.calendar_notice else ""
        raise CallFailed(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"participants: no common slot in the next 30 days{notice}",
            "participants",
        )
    return list(reply.slots)


def _book_consultation(page: Page, case_id: str) -> None:
    assert page.operator is not None
    starts = _starts_at(page)
    page.call(
        page.client.video.BookConsultation,
        video_pb2.BookConsultationRequest(
            case_id=case_id,
            actor=page.operator.principal.subject,
            topic=page.field("topic"),
            participants=_participants(page),
            starts_at=starts,
        ),
    )


def _record_minutes(page: Page) -> None:
    assert page.operator is not None
    page.call(
        page.client.video.RecordConsultationMinutes,
        video_pb2.RecordConsultationMinutesRequest(
            consultation_id=page.field("consultation_id"),
            actor=page.operator.principal.subject,
            expected_version=_int(page.field("expected_version")) or 0,
            minutes=page.form.get("minutes", ""),
        ),
    )


def _consultation_error(failure: CallFailed) -> str:
    leaf = failure.field.rsplit(".", 1)[-1].split("[", 1)[0] if failure.field else ""
    reason = labels.field_error(failure.message.split(": ", 1)[-1])
    return f"{CONSULT_FIELDS.get(leaf, leaf)}：{reason}" if leaf else reason


def _settled(page: Page, future: Any, attr: str) -> list[Any]:
    """The list ``attr`` of a started call's answer; empty when the call failed (a part of a page)."""
    if future is None:
        return []
    try:
        return list(getattr(page.client.result(future), attr))
    except CallFailed:
        return []


def _starts_at(page: Page) -> Timestamp:
    """The slot a form chose (its start as RFC 3339)."""
    starts = Timestamp()
    try:
        starts.FromJsonString(page.field("starts_at"))
    except ValueError:
        raise CallFailed(grpc.StatusCode.INVALID_ARGUMENT, "starts_at: must be set", "starts_at") from None
    return starts


def _book_visit(page: Page, case_id: str) -> None:
    assert page.operator is not None
    starts = _starts_at(page)
    page.call(
        page.client.video.BookVisit,
        video_pb2.BookVisitRequest(
            case_id=case_id, actor=page.operator.principal.subject, leader_id=page.field("leader_id"), starts_at=starts
        ),
    )


def case_act(page: Page) -> Response:
    if (redirect := _require(page)) is not None:
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
    """远程会商: propose the earliest common slots (the page again, with them), book one, record minutes."""
    try:
        if action == "propose_consultation":
            return case_page(page, proposal=_propose_consultation(page))
        if action == "book_consultation":
            _book_consultation(page, case_id)
            page.flash("远程会商已预约。")
        else:
            _record_minutes(page)
            page.flash("会商纪要已记录。")
    except CallFailed as failure:
        if failure.status in (400, 409, 503):
            return case_page(page, errors={action: {"form": _consultation_error(failure)}})
        raise
    return page.redirect(f"/console/case/{case_id}")


def _supervise(page: Page, case_id: str) -> None:
    days = _int(page.field("days")) or 5
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


# --------------------------------------------------------------------------- supervisor dashboard

DASHBOARD_METRICS = (
    "received",
    "on_time_acceptance_rate",
    "reply_rate",
    "on_time_completion_rate",
    "avg_reply_workdays",
    "satisfaction_rate",
    "third_party_satisfaction_rate",
    "overdue",
    "supervised",
)
RATE_METRICS = frozenset(
    {
        "on_time_acceptance_rate",
        "reply_rate",
        "on_time_completion_rate",
        "satisfaction_rate",
        "third_party_satisfaction_rate",
        "online_share",
        "completion_rate",
        "repeat_rate",
    }
)


def _metrics_request(
    region: str, month: str, *, drill: bool = False, metrics: tuple[str, ...] = DASHBOARD_METRICS
) -> Any:
    return stats_pb2.GetMetricsRequest(region_code=region, month=month, metrics=list(metrics), include_case_ids=drill)


def _region_param(page: Page) -> str:
    region = page.query("region") or (page.operator.principal.node if page.operator else page.gateway.node)
    return region if region in page.gateway.regions else page.gateway.node


def dashboard(page: Page) -> Response:
    if (redirect := _require(page)) is not None:
        return redirect
    region = _region_param(page)
    month = page.query("month") or today_month()
    tree = page.gateway.regions
    children = list(tree.children.get(region, []))
    # Only the children this node's warehouse covers: the node's own subtree.
    children = [c for c in children if tree.contains(page.gateway.node, c)]
    futures = {
        code: page.client.start(page.client.stats.GetMetrics, _metrics_request(code, month), page.token)
        for code in [region, *children]
    }
    figures: dict[str, dict[str, stats_pb2.Metric]] = {}
    for code, future in futures.items():
        reply = page.client.result(future)
        figures[code] = {m.name: m for m in reply.metrics}
    hotspots = page.client.start(
        page.client.stats.ListHotspots, stats_pb2.ListHotspotsRequest(region_code=region), page.token
    )
    ranking = (
        page.client.start(
            page.client.stats.RankRegions,
            stats_pb2.RankRegionsRequest(parent_region_code=region, metric="satisfaction_rate", month=month),
            page.token,
        )
        if children
        else None
    )
    supervisions = page.client.start(
        page.client.routing.ListSupervisions,
        routing_pb2.ListSupervisionsRequest(region_code=region, page=common_pb2.PageRequest(page_size=10)),
        page.token,
    )
    overdue = page.client.start(
        page.client.routing.ListWorkOrders,
        routing_pb2.ListWorkOrdersRequest(overdue_only=True, page=common_pb2.PageRequest(page_size=10)),
        page.token,
    )

    chart = (
        bar_chart(
            [(tree.get(c).name, figures[c]["received"].value if "received" in figures[c] else 0.0) for c in children],
            title="各下级地区受理量",
        )
        if children
        else ""
    )
    return page.render(
        "console/dashboard.html",
        region=region,
        region_name=tree.display_name(region),
        parent=tree.parent(region) if region != page.gateway.node and tree.parent(region) else "",
        month=month,
        children=children,
        names={c: tree.get(c).name for c in [region, *children]},
        figures=figures,
        metrics=DASHBOARD_METRICS,
        rates=RATE_METRICS,
        hotspots=_settled(page, hotspots, "hotspots"),
        ranking=_settled(page, ranking, "rows"),
        supervisions=_settled(page, supervisions, "supervisions"),
        overdue=_settled(page, overdue, "work_orders"),
        chart=chart,
    )


def drill(page: Page) -> Response:
    if (redirect := _require(page)) is not None:
        return redirect
    region = _region_param(page)
    month = page.query("month") or today_month()
    metric = page.query("metric")
    if metric not in DASHBOARD_METRICS:
        metric = "received"
    reply = page.call(page.client.stats.GetMetrics, _metrics_request(region, month, drill=True, metrics=(metric,)))
    figure = reply.metrics[0] if reply.metrics else None
    return page.render(
        "console/drill.html",
        region=region,
        region_name=page.gateway.regions.display_name(region),
        month=month,
        metric=metric,
        figure=figure,
        rates=RATE_METRICS,
    )


BULLETIN_TIMEOUT_S = 30.0


def bulletin(page: Page) -> Response:
    if (redirect := _require(page)) is not None:
        return redirect
    region = _region_param(page)
    month = page.query("month") or today_month()
    # The bulletin draws three charts and reads the month's warehouse: seconds even on a quiet node,
    # so it gets more than the pages' call deadline.
    request = stats_pb2.GetBulletinRequest(region_code=region, month=month)
    reply = page.call(page.client.stats.GetBulletin, request, timeout=BULLETIN_TIMEOUT_S)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bulletin.md", reply.markdown)
        for file in reply.files:
            archive.writestr(file.name, file.content)
    name = f"bulletin-{region}-{month}.zip"
    return Response(
        buffer.getvalue(),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


# --------------------------------------------------------------------------- exchange desk


def exchange_desk(page: Page) -> Response:
    if (redirect := _require(page)) is not None:
        return redirect
    links = page.client.start(page.client.exchange.LinkStatus, exchange_pb2.LinkStatusRequest(), page.token)
    quarantine = page.client.start(
        page.client.exchange.ListQuarantine,
        exchange_pb2.ListQuarantineRequest(page=common_pb2.PageRequest(page_size=50)),
        page.token,
    )
    return page.render(
        "console/exchange.html",
        links=list(page.client.result(links).links),
        items=list(page.client.result(quarantine).items),
        may_replay=page.may(f"{EXCHANGE}/ReplayQuarantine"),
        direction=lambda v: exchange_pb2.LinkDirection.Name(v).removeprefix("LINK_DIRECTION_"),
        link_state=lambda v: exchange_pb2.LinkState.Name(v).removeprefix("LINK_STATE_"),
    )


def replay(page: Page) -> Response:
    if (redirect := _require(page)) is not None:
        return redirect
    ids = [v for k, v in page.form.items() if k.startswith("id_")] or [page.field("id")]
    assert page.operator is not None
    reply = page.call(
        page.client.exchange.ReplayQuarantine,
        exchange_pb2.ReplayQuarantineRequest(ids=[i for i in ids if i], actor=page.operator.principal.subject),
    )
    applied = sum(1 for r in reply.results if r.applied)
    page.flash(f"已重放 {len(reply.results)} 条，其中 {applied} 条已应用。")
    return page.redirect("/console/exchange")


def _duration(hours: int) -> Duration:
    d = Duration()
    d.FromTimedelta(timedelta(hours=hours))
    return d


def now_local() -> str:
    return datetime.now(CHINA).strftime("%Y-%m-%d %H:%M")


ROUTES: list[tuple[str, str, Any, list[str]]] = [
    ("/console/login", "login_form", login_form, ["GET"]),
    ("/console/login", "login", login, ["POST"]),
    ("/console/logout", "logout", logout, ["POST"]),
    ("/console", "inbox", inbox, ["GET"]),
    ("/console/moderation", "moderation", moderation, ["GET"]),
    ("/console/leader", "leader_queue", leader_queue, ["GET"]),
    ("/console/evaluation", "evaluation", evaluation, ["GET"]),
    ("/console/evaluation", "evaluation_act", evaluation_act, ["POST"]),
    ("/console/moderation/{case_id}", "moderate", moderate, ["POST"]),
    ("/console/case/{case_id}", "case", case_page, ["GET"]),
    ("/console/case/{case_id}", "case_act", case_act, ["POST"]),
    ("/console/dashboard", "dashboard", dashboard, ["GET"]),
    ("/console/drill", "drill", drill, ["GET"]),
    ("/console/bulletin", "bulletin", bulletin, ["GET"]),
    ("/console/exchange", "exchange", exchange_desk, ["GET"]),
    ("/console/exchange/replay", "replay", replay, ["POST"]),
]
