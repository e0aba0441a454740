"""The metric definitions (``DEFINITIONS``, printed in docs/stats.md and the bulletin), the counters
each case adds to a slice (``counters``, also in SQL as ``store_sql.predicates``) and the figures
computed from a slice's sums (``compute``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from services.common.clock import to_utc
from services.common.errors import InvalidArgument
from services.stats.domain.facts import NOT_OWED_STATES, SATISFIED_RATINGS, CaseFact

DEFINITIONS: dict[str, str] = {
    "received": "受理量: cases of the slice submitted in the period (any state).",
    "online_share": "网上信访占比: received cases that came in online (web, app, WeChat, leader's message board) "
    "÷ received.",
    "on_time_acceptance_rate": "按期受理率: cases whose acceptance decision (accept or refuse) was given by its "
    "accept_notice deadline ÷ cases with such a deadline that has passed or was met by as_of "
    "(cases withdrawn or merged before a decision excluded).",
    "reply_rate": "回复率: cases replied ÷ cases due for reply (handling deadline passed by as_of, or already "
    "replied); withdrawn, merged and refused cases owe no reply.",
    "completion_rate": "办结率: cases closed ÷ cases due for completion (handling deadline passed by as_of, or "
    "already closed); withdrawn, merged and refused cases excluded.",
    "on_time_completion_rate": "按期办结率: cases closed by their handling deadline ÷ cases due for completion.",
    "avg_reply_workdays": "平均答复时长: mean working days from submission to the first reply, over replied "
    "cases (Chinese working-day calendar with 调休).",
    "p90_reply_workdays": "答复时长P90: 90th percentile (nearest rank) of working days from submission to the "
    "first reply, over replied cases.",
    "satisfaction_rate": "满意率: cases rated satisfied or basically satisfied, plus replied cases not rated "
    "within the configured working days after the reply (counted satisfied), ÷ cases rated plus "
    "such unrated cases whose window has passed by as_of.",
    "repeat_rate": "重复件率: received cases that repeat an earlier unresolved case ÷ received.",
    "overdue": "超期件: cases whose handling deadline passed without a reply by as_of, or that were replied "
    "after it (withdrawn, merged and refused excluded).",
    "supervised": "督办件: cases with at least one supervision (督办 or 挂牌督办; a 催办 chase does not count).",
    "instructed": "领导批示件: cases of a leader's classes (领导批转) on which the leader's instruction (批示) was "
    "recorded.",
    "consulted": "远程会商件: received cases on which a remote consultation (远程会商) between units of different "
    "tiers was held with its minutes recorded (docs/video.md).",
    "assist_late": "协办超期件: cases in which an assisting unit (协办) answered the lead unit after its own "
    "deadline, or was chased for it (the units are listed in the bulletin).",
    "third_party_sampled": "第三方评价抽样件: received cases drawn into a month's third-party evaluation sample "
    "(第三方评价: each node samples per unit the cases it closed in a month, docs/routing.md).",
    "third_party_satisfaction_rate": "第三方评价满意率: sampled cases the evaluation group (experts, cadres, public "
    "representatives) rated satisfied or basically satisfied ÷ sampled cases it rated; beside the citizen's "
    "satisfaction_rate, never mixed into it.",
    "merged": "并单件: received cases merged (并单) into another case; each is a submission of its own (its citizen "
    "follows and rates the main case) but not a matter of its own.",
    "matters": "事项数: received cases less those merged into another case: a matter raised by many citizens "
    "counts once. Every handling rate counts matters (merged cases owe no reply); received and "
    "satisfaction count submissions.",
    "notices_sent": "进度通知发送量: progress notices (办事进度推送: accepted, handed on, replied, reopened, closed) "
    "the registering node sent to the citizens of received cases by SMS or WeChat; a count of notices, "
    "not of cases. Counted where the registering node's events reach (it and the tiers above).",
    "notices_failed": "进度通知失败量: progress notices to the citizens of received cases given up after the "
    "retry policy's last attempt (or with no phone to send to); a count of notices.",
    "notices_opted_out": "关闭进度通知件: received cases whose citizen has turned progress notices off (at "
    "submission or later with the tracking code; turning them on again takes the case out).",
}
# The same definitions in Chinese, for the public (the portal's 张榜公布 board shows these, through
# ``Metric.definition_zh``); docs/stats.md keeps the English above. Term by term the same rule.
DEFINITIONS_ZH: dict[str, str] = {
    "received": "受理量：统计期内提交的本范围诉求件数（不论办理状态）。",
    "online_share": "网上信访占比：通过网站、手机客户端、微信、领导留言板等网上渠道提交的件数 ÷ 受理量。",
    "on_time_acceptance_rate": "按期受理率：在受理告知期限内作出受理或不予受理决定的件数 ÷ "
    "受理告知期限已到或已作出决定的件数（作出决定前撤回或被并单的不计）。",
    "reply_rate": "回复率：已答复件数 ÷ 应答复件数（办理期限已到或已答复）；"
    "撤回、被并单、不予受理的诉求无需答复，不计入。",
    "completion_rate": "办结率：已办结件数 ÷ 应办结件数（办理期限已到或已办结）；撤回、被并单、不予受理的不计。",
    "on_time_completion_rate": "按期办结率：在办理期限内办结的件数 ÷ 应办结件数。",
    "avg_reply_workdays": "平均答复时长：已答复诉求从提交到首次答复的平均工作日数（按国家法定节假日和调休安排计算）。",
    "p90_reply_workdays": "答复时长P90：已答复诉求从提交到首次答复的工作日数的第90百分位（最近秩法）。",
    "satisfaction_rate": "满意率：评价为满意或基本满意的件数，加上答复后规定工作日内未评价（视为满意）的件数，"
    "÷ 已评价件数与评价期已满的未评价件数之和。",
    "repeat_rate": "重复件率：与此前未办结诉求重复的件数 ÷ 受理量。",
    "overdue": "超期件：办理期限已过仍未答复，或超过期限才答复的件数（撤回、被并单、不予受理的不计）。",
    "supervised": "督办件：至少被督办一次（督办或挂牌督办；催办不计）的件数。",
    "instructed": "领导批示件：属领导批转类别、且已记录领导批示的件数。",
    "consulted": "远程会商件：不同层级单位就该诉求举行远程会商并记录会商纪要的件数。",
    "assist_late": "协办超期件：有协办单位超过协办时限才答复主办单位、或因此被催办的件数（通报中列出各协办单位）。",
    "third_party_sampled": "第三方评价抽样件：被抽入当月第三方评价样本的件数（各地按承办单位从当月办结件中抽样）。",
    "third_party_satisfaction_rate": "第三方评价满意率：评价组（专家、干部、群众代表）评为满意或基本满意的"
    "抽样件数 ÷ 评价组已评价的抽样件数；与群众满意率并列，不相混合。",
    "merged": "并单件：被并入其他诉求（并单）的件数；每件仍是一次提交（其群众跟踪主件进度并可评价），"
    "但不单独算作一个事项。",
    "matters": "事项数：受理量减去被并单的件数，多名群众反映的同一事项只计一次。"
    "各项办理率按事项计算（被并单的无需答复），受理量和满意率按提交件数计算。",
    "notices_sent": "进度通知发送量：登记地通过短信或微信向群众发送的办事进度通知条数（已受理、已转交、已答复、"
    "重新办理、已办结），按条计算，不按件计算；在登记地及其上级统计。",
    "notices_failed": "进度通知失败量：按重试规定最后一次仍未发出（或无手机号可发）而放弃的进度通知条数。",
    "notices_opted_out": "关闭进度通知件：群众在提交时或之后凭查询码关闭了进度通知的件数（重新开启的不计）。",
}
# Metrics where a smaller value is better (rankings order these ascending).
LOWER_IS_BETTER = frozenset(
    {
        "avg_reply_workdays",
        "p90_reply_workdays",
        "repeat_rate",
        "overdue",
        "supervised",
        "assist_late",
        "notices_failed",
    }
)
# Figures of the registering node's own events (办事进度推送: it sends the notices and records the
# citizen's choice): it and the tiers above count them, a node the case was handed down to does not, so a
# tier may count more of these than the sum of its children (docs/stats.md "办事进度推送").
REGISTERING_NODE_METRICS = frozenset({"notices_sent", "notices_failed", "notices_opted_out"})
COUNT_METRICS = frozenset(
    {
        "received",
        "overdue",
        "supervised",
        "merged",
        "matters",
        "assist_late",
        "instructed",
        "consulted",
        "third_party_sampled",
        "notices_sent",
        "notices_failed",
        "notices_opted_out",
    }
)


@dataclass
class Aggregates:
    """Counts of one slice; each field is the number of cases matching the predicate of the same name
    (of notices, for ``NOTICE_COUNTERS``)."""

    received: int = 0
    online: int = 0
    repeat: int = 0
    accept_due: int = 0
    accept_on_time: int = 0
    reply_due: int = 0
    replied: int = 0
    completion_due: int = 0
    closed: int = 0
    closed_on_time: int = 0
    satisfaction_base: int = 0
    satisfied: int = 0
    overdue: int = 0
    supervised: int = 0
    merged: int = 0
    assist_late: int = 0
    instructed: int = 0
    consulted: int = 0
    tp_sampled: int = 0
    tp_rated: int = 0
    tp_satisfied: int = 0
    notices_sent: int = 0  # notices, not cases (see NOTICE_COUNTERS)
    notices_failed: int = 0
    notices_off: int = 0
    # working days → number of replied cases (the distribution gives mean and p90 exactly)
    reply_days: dict[int, int] = field(default_factory=dict)

    def add(self, other: Aggregates) -> Aggregates:
        out = Aggregates()
        for name in COUNTERS:
            setattr(out, name, getattr(self, name) + getattr(other, name))
        days = dict(self.reply_days)
        for k, v in other.reply_days.items():
            days[k] = days.get(k, 0) + v
        out.reply_days = days
        return out


COUNTERS: tuple[str, ...] = (
    "received",
    "online",
    "repeat",
    "accept_due",
    "accept_on_time",
    "reply_due",
    "replied",
    "completion_due",
    "closed",
    "closed_on_time",
    "satisfaction_base",
    "satisfied",
    "overdue",
    "supervised",
    "merged",
    "assist_late",
    "instructed",
    "consulted",
    "tp_sampled",
    "tp_rated",
    "tp_satisfied",
    "notices_sent",
    "notices_failed",
    "notices_off",
)
# Counters that add a case's number of notices, not 0 or 1 (a case has several).
NOTICE_COUNTERS = frozenset({"notices_sent", "notices_failed"})


def next_window(as_of: datetime, deadlines: Iterable[datetime | None]) -> datetime | None:
    """The first of a fact's deadlines at or after ``as_of`` (None when all have passed).

    Every time-dependent predicate compares one of these deadlines with as_of (``deadline <
    as_of``), so a fact's counters as of ``as_of`` stay the same until that moment has passed;
    the rollups use it to know which facts to re-count (see docs/stats.md, "Rollups").
    """
    t = to_utc(as_of)
    ahead = [to_utc(d) for d in deadlines if d is not None and to_utc(d) >= t]
    return min(ahead) if ahead else None


def counters(fact: CaseFact, as_of: datetime) -> tuple[int, ...]:
    """The fact's 0/1 per ``COUNTERS`` entry as of ``as_of`` (its number of notices for ``NOTICE_COUNTERS``):
    the definitions above, case by case.

    The same conditions exist in SQL (``store_sql.predicates``) for set-based queries over many facts;
    this form lets one event move one case's contribution to the rollups without a round trip
    per counter. ``tests/integration/test_stats_rollups.py`` checks that both agree on every
    counter of thousands of generated facts at several moments. Missing values (NULL in SQL)
    make a condition false, as they do there.
    """
    t = to_utc(as_of)
    accept_due = _utc_or_none(fact.accept_due)
    accepted_at = _utc_or_none(fact.accepted_at)
    handling_due = _utc_or_none(fact.handling_due)
    replied_at = _utc_or_none(fact.replied_at)
    closed_at = _utc_or_none(fact.closed_at)
    rating_default_at = _utc_or_none(fact.rating_default_at)
    owed = handling_due is not None and fact.state not in NOT_OWED_STATES
    acceptable = accept_due is not None and fact.state not in ("WITHDRAWN", "MERGED")
    default_satisfied = (
        fact.satisfaction == "" and replied_at is not None and rating_default_at is not None and rating_default_at < t
    )
    past_handling = handling_due is not None and handling_due < t
    accepted_on_time = accepted_at is not None and accept_due is not None and accepted_at <= accept_due
    values = {
        "received": True,
        "online": bool(fact.online),
        "repeat": bool(fact.is_repeat),
        "accept_due": acceptable and (accepted_at is not None or (accept_due is not None and accept_due < t)),
        "accept_on_time": acceptable and accepted_on_time,
        "reply_due": owed and (replied_at is not None or past_handling),
        "replied": owed and replied_at is not None,
        "completion_due": owed and (closed_at is not None or past_handling),
        "closed": owed and closed_at is not None,
        "closed_on_time": owed and closed_at is not None and handling_due is not None and closed_at <= handling_due,
        "satisfaction_base": fact.satisfaction != "" or default_satisfied,
        "satisfied": fact.satisfaction in SATISFIED_RATINGS or default_satisfied,
        "overdue": owed
        and (
            (replied_at is None and past_handling)
            or (replied_at is not None and handling_due is not None and replied_at > handling_due)
        ),
        "supervised": fact.supervision_count > 0,
        "merged": fact.state == "MERGED",
        "assist_late": fact.assist_late_units != "",
        "instructed": fact.instructed_at is not None,
        "consulted": fact.consulted_at is not None,
        "tp_sampled": fact.tp_month != "",
        "tp_rated": fact.tp_rating != "",
        "tp_satisfied": fact.tp_rating in SATISFIED_RATINGS,
        "notices_sent": fact.notices_sent,
        "notices_failed": fact.notices_failed,
        "notices_off": fact.notices_off,
    }
    return tuple(int(values[name]) for name in COUNTERS)


def _utc_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else to_utc(value)


# Which predicate's cases stand behind each metric (the drill-down lists the numerator's cases).
NUMERATOR_PREDICATE: dict[str, str] = {
    "received": "received",
    "online_share": "online",
    "on_time_acceptance_rate": "accept_on_time",
    "reply_rate": "replied",
    "completion_rate": "closed",
    "on_time_completion_rate": "closed_on_time",
    "avg_reply_workdays": "replied_any",
    "p90_reply_workdays": "replied_any",
    "satisfaction_rate": "satisfied",
    "repeat_rate": "repeat",
    "overdue": "overdue",
    "supervised": "supervised",
    "merged": "merged",
    "matters": "matter",
    "assist_late": "assist_late",
    "instructed": "instructed",
    "consulted": "consulted",
    "third_party_sampled": "tp_sampled",
    "third_party_satisfaction_rate": "tp_satisfied",
    "notices_sent": "notices_sent",
    "notices_failed": "notices_failed",
    "notices_opted_out": "notices_off",
}


@dataclass(frozen=True)
class MetricValue:
    name: str
    definition: str
    value: float
    numerator: int
    denominator: int
    case_ids: list[str]


def _ratio(name: str, numerator: int, denominator: int) -> MetricValue:
    value = numerator / denominator if denominator else 0.0
    return MetricValue(name, DEFINITIONS[name], value, numerator, denominator, [])


def p90(days: Mapping[int, int]) -> float:
    """Nearest-rank 90th percentile of a histogram {value: count}."""
    total = sum(days.values())
    if not total:
        return 0.0
    rank = math.ceil(0.9 * total)
    seen = 0
    for value in sorted(days):
        seen += days[value]
        if seen >= rank:
            return float(value)
    return float(max(days))


# The counters each metric reads besides ``received`` (which every ranking needs for its minimum);
# the reply-time metrics read the reply-day histogram. Lets a ranking sum only what it shows.
METRIC_COUNTERS: dict[str, tuple[str, ...]] = {
    "received": (),
    "online_share": ("online",),
    "on_time_acceptance_rate": ("accept_on_time", "accept_due"),
    "reply_rate": ("replied", "reply_due"),
    "completion_rate": ("closed", "completion_due"),
    "on_time_completion_rate": ("closed_on_time", "completion_due"),
    "avg_reply_workdays": (),
    "p90_reply_workdays": (),
    "satisfaction_rate": ("satisfied", "satisfaction_base"),
    "repeat_rate": ("repeat",),
    "overdue": ("overdue",),
    "supervised": ("supervised",),
    "merged": ("merged",),
    "matters": ("merged",),
    "assist_late": ("assist_late",),
    "instructed": ("instructed",),
    "consulted": ("consulted",),
    "third_party_sampled": ("tp_sampled",),
    "third_party_satisfaction_rate": ("tp_satisfied", "tp_rated"),
    "notices_sent": ("notices_sent",),
    "notices_failed": ("notices_failed",),
    "notices_opted_out": ("notices_off",),
}
REPLY_DAY_METRICS = frozenset({"avg_reply_workdays", "p90_reply_workdays"})


# The 办事进度推送 counts and the counter each reads.
_NOTICE_METRICS = {
    "notices_sent": "notices_sent",
    "notices_failed": "notices_failed",
    "notices_opted_out": "notices_off",
}


def compute(name: str, agg: Aggregates) -> MetricValue:
    """The value of metric ``name`` for a slice; the definitions are ``DEFINITIONS[name]``."""
    if name == "received":
        return MetricValue(name, DEFINITIONS[name], float(agg.received), agg.received, 1, [])
    if name == "online_share":
        return _ratio(name, agg.online, agg.received)
    if name == "on_time_acceptance_rate":
        return _ratio(name, agg.accept_on_time, agg.accept_due)
    if name == "reply_rate":
        return _ratio(name, agg.replied, agg.reply_due)
    if name == "completion_rate":
        return _ratio(name, agg.closed, agg.completion_due)
    if name == "on_time_completion_rate":
        return _ratio(name, agg.closed_on_time, agg.completion_due)
    if name in ("avg_reply_workdays", "p90_reply_workdays"):
        total = sum(agg.reply_days.values())
        if name == "avg_reply_workdays":
            value = sum(k * v for k, v in agg.reply_days.items()) / total if total else 0.0
        else:
            value = p90(agg.reply_days)
        return MetricValue(name, DEFINITIONS[name], value, total, total, [])
    if name == "satisfaction_rate":
        return _ratio(name, agg.satisfied, agg.satisfaction_base)
    if name == "repeat_rate":
        return _ratio(name, agg.repeat, agg.received)
    if name == "overdue":
        return MetricValue(name, DEFINITIONS[name], float(agg.overdue), agg.overdue, 1, [])
    if name == "supervised":
        return MetricValue(name, DEFINITIONS[name], float(agg.supervised), agg.supervised, 1, [])
    if name == "instructed":
        return MetricValue(name, DEFINITIONS[name], float(agg.instructed), agg.instructed, 1, [])
    if name == "consulted":
        return MetricValue(name, DEFINITIONS[name], float(agg.consulted), agg.consulted, 1, [])
    if name == "assist_late":
        return MetricValue(name, DEFINITIONS[name], float(agg.assist_late), agg.assist_late, 1, [])
    if name == "third_party_sampled":
        return MetricValue(name, DEFINITIONS[name], float(agg.tp_sampled), agg.tp_sampled, 1, [])
    if name == "third_party_satisfaction_rate":
        return _ratio(name, agg.tp_satisfied, agg.tp_rated)
    if name == "merged":
        return MetricValue(name, DEFINITIONS[name], float(agg.merged), agg.merged, 1, [])
    if name in _NOTICE_METRICS:
        count = getattr(agg, _NOTICE_METRICS[name])
        return MetricValue(name, DEFINITIONS[name], float(count), count, 1, [])
    if name == "matters":
        matters = agg.received - agg.merged
        return MetricValue(name, DEFINITIONS[name], float(matters), matters, 1, [])
    raise InvalidArgument("metrics", f"unknown metric {name!r}; known: {sorted(DEFINITIONS)}")


def check_metric_names(names: Iterable[str], field_name: str = "metrics") -> list[str]:
    out = list(names) or list(DEFINITIONS)
    for name in out:
        if name not in DEFINITIONS:
            raise InvalidArgument(field_name, f"unknown metric {name!r}; known: {sorted(DEFINITIONS)}")
    return out
