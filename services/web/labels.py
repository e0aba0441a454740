"""Chinese words for the contract's names (states, actions, deadline kinds, fields) and error reasons."""

from __future__ import annotations

import re
from collections.abc import Callable

from lianxin.common.v1 import common_pb2
from lianxin.video.v1 import video_service_pb2 as video_pb2

STATE_LABELS: dict[str, str] = {
    "REGISTERED": "已登记",
    "ACCEPTED": "已受理",
    "REFUSED": "不予受理",
    "ASSIGNED": "已交办",
    "IN_PROGRESS": "办理中",
    "REPLIED": "已答复",
    "CLOSED": "已办结",
    "TRANSFERRED": "已转送",
    "OBJECTED": "异议中",
    "EXTENDED": "已延期",
    "REOPENED": "退回重办",
    "WITHDRAWN": "已撤回",
    "MERGED": "已并单",
    "MODERATION": "待审核",
}

# Visit states (lianxin.video.v1.VisitState) as a citizen reads them.
VISIT_LABELS: dict[int, str] = {
    video_pb2.VISIT_STATE_HOLDING: "确认中",
    video_pb2.VISIT_STATE_BOOKED: "已预约",
    video_pb2.VISIT_STATE_CHECKED_IN: "已签到",
    video_pb2.VISIT_STATE_COMPLETED: "已接访",
    video_pb2.VISIT_STATE_CANCELLED: "已取消",
    video_pb2.VISIT_STATE_NO_SHOW: "未到场",
}

CONSULTATION_BOOKED = video_pb2.CONSULTATION_STATE_BOOKED
CONSULTATION_LABELS: dict[int, str] = {
    video_pb2.CONSULTATION_STATE_HOLDING: "确认中",
    video_pb2.CONSULTATION_STATE_BOOKED: "已预约",
    video_pb2.CONSULTATION_STATE_HELD: "已会商",
    video_pb2.CONSULTATION_STATE_CANCELLED: "已取消",
}

SATISFACTION_LABELS: dict[int, str] = {
    common_pb2.SATISFACTION_SATISFIED: "满意",
    common_pb2.SATISFACTION_BASICALLY_SATISFIED: "基本满意",
    common_pb2.SATISFACTION_UNSATISFIED: "不满意",
}

CHANNEL_LABELS: dict[str, str] = {
    "WEB": "网站",
    "APP": "手机客户端",
    "HOTLINE": "12345热线",
    "WECHAT": "微信",
    "LETTER": "来信",
    "LEADER_BOARD": "领导留言板",
    "NATIONAL_TRANSFER": "国家信访系统转送",
    "WALK_IN": "走访",
    "VIDEO": "视频接访",
}

DEADLINE_LABELS: dict[str, str] = {
    "assign": "交办时限",
    "accept_notice": "受理告知时限",
    "objection": "异议期限",
    "settle": "办理时限",
    "hotline_emergency": "紧急件时限",
    "hotline_enquiry": "咨询件时限",
    "hotline_complaint": "投诉件时限",
    "review_request": "复查申请期限",
    "review_decision": "复查决定时限",
    "assist": "协办答复时限",
    "instruct": "领导批示时限",
}

# History actions of a work order (routing's transition table and sweep) in words.
HISTORY_LABELS: dict[str, str] = {
    "register": "登记",
    "accept": "受理",
    "refuse": "不予受理",
    "assign": "交办",
    "start": "签收办理",
    "object": "提出异议",
    "arbitrate": "异议裁定",
    "request_extension": "申请延期",
    "approve_extension": "批准延期",
    "reject_extension": "驳回延期",
    "reply": "答复",
    "close": "办结",
    "reopen": "退回重办",
    "review": "申请复查",
    "withdraw": "撤回",
    "merge": "并单",
    "unmerge": "撤销并单",
    "merge_in": "并入案件",
    "merge_out": "撤出并单",
    "assist_request": "请求协办",
    "assist_answer": "协办答复",
    "assist_late_answer": "协办逾期答复",
    "leader_hold": "待领导批示",
    "instruct": "领导已批示",
    "transfer": "转送",
    "escalate_up": "上报",
    "take_back": "退回",
    "pause": "暂停计时",
    "resume": "恢复计时",
}

METRIC_LABELS: dict[str, str] = {
    "received": "受理量",
    "online_share": "网上信访占比",
    "on_time_acceptance_rate": "按期受理率",
    "reply_rate": "回复率",
    "completion_rate": "办结率",
    "on_time_completion_rate": "按期办结率",
    "avg_reply_workdays": "平均答复时长（工作日）",
    "p90_reply_workdays": "答复时长P90（工作日）",
    "satisfaction_rate": "满意率",
    "repeat_rate": "重复件率",
    "overdue": "超期件",
    "supervised": "督办件",
    "third_party_sampled": "第三方评价抽样件",
    "third_party_satisfaction_rate": "第三方评价满意率",
    "merged": "并单件",
    "matters": "事项数",
    "assist_late": "协办超期件",
    "instructed": "领导批示件",
    "consulted": "远程会商件",
    "notices_sent": "进度通知发送量",
    "notices_failed": "进度通知失败量",
    "notices_opted_out": "关闭进度通知件",
}

ROLE_LABELS: dict[str, str] = {
    "clerk": "信访办登记",
    "handler": "承办单位",
    "supervisor": "督查督办",
    "auditor": "审计",
    "admin": "系统管理",
    "evaluator": "第三方评价",
}

FIELD_LABELS: dict[str, str] = {
    "title": "标题",
    "body": "诉求内容",
    "category": "诉求分类",
    "region_code": "事发地",
    "address": "事发地址",
    "name": "姓名",
    "phone": "手机号码",
    "id_number": "身份证号码",
    "anonymous": "匿名",
    "tracking_code": "查询码",
    "phone_last4": "手机号后四位",
    "satisfaction": "评价",
    "comment": "评价意见",
    "reason": "理由",
    "text": "答复内容",
    "note": "说明",
    "days": "延期天数",
    "unit_id": "承办单位",
    "new_unit_id": "改派单位",
    "node": "交办节点",
    "level": "督办级别",
    "demand": "督办要求",
    "due_at": "办结期限",
    "decision": "决定",
}

# The service's reasons are English sentences; these patterns say the same in Chinese.
_REASONS: tuple[tuple[str, str], ...] = (
    (r"must not be empty|is required|must be set|needs a", "此项必须填写"),
    (r"must be a mainland mobile number", "请填写正确的手机号码：11位数字，以13–19开头"),
    (r"must be 18 characters", "身份证号码应为18位"),
    (r"17 digits followed by", "身份证号码应为17位数字加一位数字或X"),
    (r"check digit", "身份证号码校验位不正确，请核对"),
    (r"birth date", "身份证号码中的出生日期不正确"),
    (r"region prefix", "身份证号码前6位不是有效的行政区划代码"),
    (r"at most (\d+) characters", "内容过长，最多{0}个字"),
    (r"outside this node|is not a region", "事发地不在本地区受理范围内"),
    (r"must be one of", "请从列表中选择"),
    (r"does not accept anonymous", "此渠道不能匿名提交"),
    (r"tracking code|not found", "查询码或手机号后四位不正确"),
    (r"four digits|last4", "请填写手机号后四位数字"),
    (r"extension is 1 to (\d+) days", "延期天数应为1至{0}天"),
    (r"name at least one assisting unit", "请至少选择一个协办单位"),
    (r"is the lead unit", "主办单位不能同时作为协办单位"),
    (r"already asked and has not answered", "该单位已在协办中，尚未答复"),
    (r"is named twice", "同一单位只能选择一次"),
    (r"is not shorter than the lead unit's", "本节点的协办时限不短于主办单位的办理时限，不能请求协办：请缩短协办时限"),
    (r"must be satisfied, basically satisfied or unsatisfied", "请选择评价等次"),
    (r"不满意须说明理由", "评价为不满意时须说明理由"),
    (r"expected YYYY-MM", "月份应写作 YYYY-MM，例如 2026-11"),
    (r"has not begun", "该月尚未开始，没有可抽取的办结案件"),
    (r"already rated by", "该案件已评价，每件只评一次"),
    (r"sample was already drawn", "该月样本已抽取（每月只抽一次）"),
    (r"letters, digits", "随机种子只能包含字母、数字、- 和 _"),
    (r"must be 1\.\.100", "抽样比例应为1至100"),
    (r"must be 1\.\.(\d+)", "每单位最少件数应为1至{0}"),
)


def state_name(value: int) -> str:
    return common_pb2.CaseState.Name(common_pb2.CaseState.ValueType(value)).removeprefix("CASE_STATE_") if value else ""


def state_label(value: int) -> str:
    name = state_name(value) or "UNSPECIFIED"
    return STATE_LABELS.get(name, name)


def channel_label(value: int) -> str:
    name = common_pb2.Channel.Name(common_pb2.Channel.ValueType(value)).removeprefix("CHANNEL_") if value else ""
    return CHANNEL_LABELS.get(name, name)


def field_error(reason: str) -> str:
    """A Chinese sentence for the service's reason; the original reason when no pattern fits."""
    for pattern, chinese in _REASONS:
        match = re.search(pattern, reason)
        if match:
            return chinese.format(*match.groups())
    return reason


# Form field names of the pages for the contract's field paths (complainant.phone → phone).
def form_field(contract_field: str) -> str:
    leaf = contract_field.rsplit(".", 1)[-1]
    # MergeCases names the merged cases case_ids[i]; on a case page that is the case itself.
    # RequestAssist names the assisting units unit_ids[i]: the form's checkboxes are one field.
    return {"new_unit_id": "unit_id", "case_ids": "main_case_id"}.get(leaf.split("[", 1)[0], leaf.split("[", 1)[0])


# --------------------------------------------------------------------------- history for people

# Labels of history entries that are facts, not transitions (routing's workorder.py), and of the
# sweep's deadline stages ("warning:settle" = 预警 of the handling limit).
HISTORY_LABELS.update(
    {
        "recompute_deadlines": "期限重算",
        "visit_outcome": "视频接访",
        "consultation_booked": "远程会商预约",
        "consultation_held": "远程会商纪要",
    }
)
# Prefix of the label a merged case's work order gets for each change of its main case (routing's FOLLOW_MAIN).
FOLLOW_MAIN = "main:"
STAGE_LABELS: dict[str, str] = {"warning": "到期预警", "chase": "超期催办", "supervision": "超期督办"}
ACTOR_LABELS: dict[str, str] = {"system": "系统", "citizen": "群众", "video": "视频接访系统"}

# The notes routing writes itself (system actions), as a person reads them. Operators' own reasons
# are shown as typed. Each pattern is the whole note; {region:N} names the region of group N.
_NOTES: tuple[tuple[str, str], ...] = (
    (r"受理: placed by the dispatch catalogue", "按派单目录自动受理"),
    (r"受理: 上报 from a lower tier", "下级上报，本级受理"),
    (r"受理 \(人工分派\)", "人工分派并受理"),
    (r"派单目录(?: .*)?", "按派单目录交办"),
    (r"上报: the case came back up", "下级上报，案件回到本级"),
    (r"交办 to (\d+): the matter's region (\d+) lies there", "交办至{region:1}：事发地{region:2}在其辖区"),
    (r"satisfied", "群众评价满意，办结"),
    (r"unsatisfied \(不满意\)", "群众评价不满意，退回重办"),
    (r"withdrawn by the citizen \(撤回\)", "群众撤回诉求"),
    (r"(.*) \(\+(\d+) days asked\)", "{1}（申请延期{2}天）"),
    (r"复查维持: (.*)", "复查维持：{1}"),
    (
        r"(\w+) due (\S+) → (\S+) \(official calendar for (.+) loaded\)",
        "{kind:1}由{2}改为{3}（已载入{4}年官方节假日安排）",
    ),
    (
        r"(.*) unchanged, no longer provisional \(official calendar for (.+) loaded\)",
        "{dues:1}不变，不再为暂定（已载入{2}年官方节假日安排）",
    ),
    (r"no unit for category (\S+) in .*", "派单目录中没有办理“{1}”的单位，待人工分派"),
    # 领导批转 / 批示 (routing's handlers.py and workorder.py).
    (r"领导批转: class \S+ \((.*)\) waits for the instruction of the (.+)", "属领导批转类别“{1}”，待{2}批示"),
    (r"领导批示 \((.*?)\): (.*)", "{1}批示：{2}"),
    (r"受理: 领导批示 recorded", "领导已批示，受理"),
    (r"领导已批示: no routing rule placed the case, a clerk assigns it", "领导已批示，待人工分派"),
)
_PROVISIONAL = re.compile(r"\s*\[provisional deadline: (.*?) counted Mon-Fri, no official calendar for (.*?)\]")
# Absolute file paths (a server's directories are nobody's business on a page): keep the file name.
_PATH = re.compile(r"(?<![\w:/\\])(?:[A-Za-z]:)?(?:[/\\][\w.\-]+){2,}")


def _kind(kind: str) -> str:
    return DEADLINE_LABELS.get(kind, kind)


def _dues(text: str) -> str:
    """ "settle due 2027-02-15; objection due 2027-01-02" → "办理时限2027-02-15、异议期限2027-01-02"."""
    parts = [re.fullmatch(r"(\w+) due (\S+)", p.strip()) for p in re.split(r"[;,]", text) if p.strip()]
    if not parts or not all(parts):
        return "期限" if text.strip() in ("", "deadlines") else text
    return "、".join(f"{_kind(m.group(1))}{m.group(2)}" for m in parts if m)


def history_note(note: str, region_name: Callable[[str], str] = str) -> str:
    """A history note in Chinese for people, with no server path in it."""
    note = note.strip()
    suffix = ""
    provisional = _PROVISIONAL.search(note)
    if provisional:
        note = _PROVISIONAL.sub("", note).strip()
        suffix = (
            f"（暂定期限：{_dues(provisional.group(1))}，按周一至周五计算，尚无{provisional.group(2)}年官方节假日安排）"
        )
    for pattern, text in _NOTES:
        match = re.fullmatch(pattern, note, re.S)
        if match is None:
            continue

        def fill(ref: re.Match[str], match: re.Match[str] = match) -> str:
            kind, _, number = ref.group(1).rpartition(":")
            value = match.group(int(number)) or ""
            render: Callable[[str], str] = {"region": region_name, "kind": _kind, "dues": _dues}.get(kind, str)
            return render(value)

        note = re.sub(r"\{((?:\w+:)?\d+)\}", fill, text)
        break
    note = _PATH.sub(lambda m: re.split(r"[/\\]", m.group(0))[-1], note)
    return note + suffix if note else suffix.removeprefix("（").removesuffix("）")


def history_action(action: str) -> str:
    if action.startswith(FOLLOW_MAIN):  # a merged case following its main case ("main:reply")
        return f"主件{history_action(action.removeprefix(FOLLOW_MAIN))}"
    stage, _, kind = action.partition(":")
    if kind and stage in STAGE_LABELS:
        return f"{STAGE_LABELS[stage]}（{_kind(kind)}）"
    return HISTORY_LABELS.get(action, action)


def actor_label(actor: str) -> str:
    return ACTOR_LABELS.get(actor, actor)


def public_summary(summary: str) -> str:
    """The citizen timeline's "已受理 accepted" without its English gloss."""
    return re.sub(r"\s+[A-Za-z][A-Za-z ,.'()-]*$", "", summary.strip()) or summary


# Why a citizen's video booking or cancellation was refused, in words (video's reasons are English).
_VISIT_REASONS: tuple[tuple[str, str], ...] = (
    (r"already has a video visit booked", "您的诉求已预约了一场视频接访；如需改期，请先取消原预约。"),
    (r"24 hours before", "距接访开始已不足24小时，无法在线取消，请致电信访办。"),
    (r"not free|already booked|no slot free", "该时段刚被预约或已不可预约，请选择其他时段。"),
    (r"starts_at", "请选择一个空闲时段。"),
    (r"leader_id|leader|schedule", "请选择接访领导。"),
    (r"case pass|another case", "请重新查询诉求进度后再预约。"),
    (r"CANCELLED|not booked", "该预约已取消或已结束。"),
)


def visit_error(status: int, reason: str) -> str:
    """A sentence for the citizen about a refused booking or cancellation."""
    for pattern, chinese in _VISIT_REASONS:
        if re.search(pattern, reason):
            return chinese
    return "暂时无法完成预约，请稍后再试。" if status >= 500 else field_error(reason)
