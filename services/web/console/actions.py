"""The actions of a case page as forms: routing's transition table, each action its RPC and fields."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lianxin.routing.v1 import routing_service_pb2 as routing_pb2

from services.common.security import OFFICE
from services.web import labels
from services.web.app import Page
from services.web.console.common import ROUTING, to_int


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
            **_wo(o, p), days=to_int(p.field("days")), reason=p.field("reason")
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
        f"{ROUTING}/EscalateCase",
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


def owing_units(page: Page, order: routing_pb2.WorkOrder) -> list[str]:
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
    if owing_units(page, order):
        out.append("answer_assist")
    if order.leader_class and not order.HasField("instruction"):
        out.append("instruct")
    return out


def forms_for(page: Page, order: routing_pb2.WorkOrder | None) -> list[ActionForm]:
    if order is None:
        return []
    wanted: list[str] = []
    for action in order.allowed_actions:
        name = ACTION_ALIASES.get(action, action)
        if name in FORMS_BY_ACTION and name not in wanted:
            wanted.append(name)
    wanted.extend(_extra_forms(page, order))
    return [FORMS_BY_ACTION[a] for a in wanted if page.may(FORMS_BY_ACTION[a].method)]
