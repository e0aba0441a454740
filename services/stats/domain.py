"""The warehouse's business rules: statistical months, folding case events into a fact, metric definitions.

Plain code (no gRPC, SQLAlchemy or broker): every definition printed in ``docs/stats.md`` lives here
as ``DEFINITIONS`` and as the functions that compute the figure from ``Aggregates``.

Cohort rule. Every metric of a period is computed over the *cases submitted in that period*
(by statistical month, or by ``submitted_at`` for a free period), looked at as of a moment
(``as_of``, normally now). "Due" means the relevant deadline has passed by ``as_of`` or the duty
was done before it; so the figures of a month settle as its deadlines pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta

from services.common.calendar import CalendarUnknown, WorkingCalendar, end_of_day
from services.common.calendar import add_workdays as _add_workdays_by
from services.common.calendar import workdays_between as _workdays_between_by
from services.common.clock import CHINA, china_date, to_utc
from services.common.errors import InvalidArgument

ONLINE_CHANNELS = frozenset({"web", "app", "wechat", "leader_board"})
# States after which a case is no longer handled; withdrawn/merged/refused cases owe no reply.
TERMINAL_STATES = frozenset({"CLOSED", "WITHDRAWN", "MERGED", "REFUSED"})
NOT_OWED_STATES = frozenset({"WITHDRAWN", "MERGED", "REFUSED"})
# Deadline kinds that bound the unit's handling (reply/close): petitions settle, hotline classes.
HANDLING_KINDS = ("reply", "settle", "hotline_emergency", "hotline_enquiry", "hotline_complaint")
ACCEPT_KINDS = ("accept_notice",)
SUPERVISION_LEVELS = frozenset({"supervise", "listed"})
SATISFIED_RATINGS = frozenset({"satisfied", "basically_satisfied"})
# Routing's label prefix of a merged case following its main case (并单: "main:reply").
FOLLOW_MAIN = "main:"


@dataclass(frozen=True)
class StatsConfig:
    """What an operator may tune; see docs/stats.md."""

    # Day of the month on which a statistical month starts (1 = calendar months). With d > 1 the
    # month that *ends* on the (d-1)-th names the period: 2026-10-21..2026-11-20 is "2026-11".
    month_start_day: int = 1
    # No rating within this many working days after the reply counts as satisfied (DESIGN §3).
    satisfied_after_workdays: int = 20

    def __post_init__(self) -> None:
        if not 1 <= self.month_start_day <= 28:
            raise InvalidArgument("month_start_day", f"must be 1..28, got {self.month_start_day}")
        if self.satisfied_after_workdays < 0:
            raise InvalidArgument("satisfied_after_workdays", "must not be negative")


# ---------------------------------------------------------------------------------- months


def parse_month(text: str, field_name: str = "month") -> tuple[int, int]:
    try:
        year_s, month_s = text.split("-")
        year, month = int(year_s), int(month_s)
    except ValueError:
        raise InvalidArgument(field_name, f"expected YYYY-MM, got {text!r}") from None
    if not (1900 < year < 2200 and 1 <= month <= 12) or len(month_s) != 2:
        raise InvalidArgument(field_name, f"expected YYYY-MM, got {text!r}")
    return year, month


def month_name(year: int, month: int) -> str:
    return f"{year:04d}-{month:02d}"


def shift_month(name: str, delta: int) -> str:
    year, month = parse_month(name)
    index = year * 12 + (month - 1) + delta
    return month_name(index // 12, index % 12 + 1)


def stat_month_of_date(day: date, start_day: int) -> str:
    """The statistical month a Shanghai calendar day belongs to."""
    if start_day == 1 or day.day < start_day:
        return month_name(day.year, day.month)
    return shift_month(month_name(day.year, day.month), 1)


def stat_month_of(moment: datetime, config: StatsConfig) -> str:
    return stat_month_of_date(china_date(moment), config.month_start_day)


def month_bounds(name: str, config: StatsConfig) -> tuple[datetime, datetime]:
    """[start, end) in UTC of statistical month ``name`` (Shanghai midnights)."""
    year, month = parse_month(name)
    if config.month_start_day == 1:
        first = date(year, month, 1)
    else:
        prev_year, prev_month = parse_month(shift_month(name, -1))
        first = date(prev_year, prev_month, config.month_start_day)
    next_year, next_month = parse_month(shift_month(name, 1))
    last = date(next_year, next_month, 1) if config.month_start_day == 1 else date(year, month, config.month_start_day)
    start = datetime.combine(first, time.min, tzinfo=CHINA).astimezone(UTC)
    end = datetime.combine(last, time.min, tzinfo=CHINA).astimezone(UTC)
    return start, end


def year_months(year: str) -> list[str]:
    try:
        number = int(year)
    except ValueError:
        raise InvalidArgument("year", f"expected YYYY, got {year!r}") from None
    if not 1900 < number < 2200:
        raise InvalidArgument("year", f"expected YYYY, got {year!r}")
    return [month_name(number, m) for m in range(1, 13)]


# ---------------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class CaseEvent:
    """One event about a case as the warehouse needs it, whatever node or service sent it."""

    case_id: str
    version: int
    kind: str  # the EventEnvelope payload field name, e.g. "work_order_changed"
    occurred_at: datetime
    # case_registered
    region_code: str = ""
    registering_node: str = ""
    channel: str = ""
    category: str = ""
    submitted_at: datetime | None = None
    is_repeat: bool = False
    # work orders and evaluations
    unit_id: str = ""
    work_order_id: str = ""
    deadlines: Mapping[str, datetime] = field(default_factory=dict)
    manual_queue: bool = False
    to_state: str = ""
    action: str = ""
    satisfaction: str = ""  # satisfied | basically_satisfied | unsatisfied
    level: str = ""  # supervision level
    # case_handed_off: where ownership went, how ("assign_down", "escalate_up", "national_transfer"),
    # the new owner's epoch; ``carries_case`` when the case's fields above came with it
    to_node: str = ""
    from_node: str = ""
    hand_off_kind: str = ""
    owner_epoch: int = 0
    carries_case: bool = False
    # 协办: assisting units late (an answer after its deadline, or chased by an "assist" deadline warning)
    late_assisting_units: tuple[str, ...] = ()
    # 第三方评价: the month of the sample the case was drawn into (case_sampled, third_party_rated)
    # and the evaluation group's rating (satisfied | basically_satisfied | unsatisfied)
    sample_month: str = ""
    third_party_rating: str = ""


@dataclass(frozen=True)
class CaseFact:
    """The warehouse row of one case: everything the metrics need, derived from its events."""

    case_id: str
    region_code: str
    province_code: str
    city_code: str
    county_code: str
    registering_node: str
    channel: str
    category: str
    state: str
    version: int
    submitted_at: datetime
    updated_at: datetime
    stat_month: str = ""
    online: bool = False
    is_repeat: bool = False
    unit_id: str = ""
    work_order_id: str = ""
    accept_due: datetime | None = None
    accepted_at: datetime | None = None
    handling_due: datetime | None = None
    replied_at: datetime | None = None
    reply_workdays: int | None = None
    closed_at: datetime | None = None
    satisfaction: str = ""
    rating_default_at: datetime | None = None
    supervision_count: int = 0
    # 协办: the assisting units that were late with their answer to the lead unit, ",a,b," ("" none).
    assist_late_units: str = ""
    # 领导批转: when a leader's instruction (批示) was recorded on the case (first), None when never.
    instructed_at: datetime | None = None
    # 远程会商: when the minutes of a consultation about the case were first recorded, None when never.
    consulted_at: datetime | None = None
    # 第三方评价: the month of the sample the case was drawn into ("" never), and the evaluation
    # group's rating ("" not rated; satisfied | basically_satisfied | unsatisfied).
    tp_month: str = ""
    tp_rating: str = ""


class CachedCalendar:
    """A ``WorkingCalendar`` that remembers each day's answer.

    Every event refolds its case's whole history, so the same days are asked again and again (a
    reply alone asks for some 30 days); the official calendar lookups behind them dominated the
    ingest path. For a calendar that does not change while the process runs (the warehouse's).
    """

    def __init__(self, inner: WorkingCalendar) -> None:
        self._inner = inner
        self._days: dict[date, bool] = {}

    def is_workday(self, d: date) -> bool:
        known = self._days.get(d)
        if known is None:
            known = self._days[d] = self._inner.is_workday(d)  # CalendarUnknown propagates, uncached
        return known

    def add_workdays(self, start: date, n: int) -> date:
        return _add_workdays_by(self.is_workday, start, n)

    def workdays_between(self, a: date, b: date) -> int:
        return _workdays_between_by(self.is_workday, a, b)

    def known_range(self) -> tuple[date, date]:
        return self._inner.known_range()


def workdays_between(calendar: WorkingCalendar, a: date, b: date) -> int:
    """Working days after ``a`` up to ``b``; Monday-Friday for years without an official calendar.

    Statistics must not stop when a year's holiday notice is missing; the fallback is written in
    docs/stats.md and errs by at most the holidays of that year.
    """
    try:
        return calendar.workdays_between(a, b)
    except CalendarUnknown:
        step, lo, hi = (1, a, b) if b >= a else (-1, b, a)
        count, day = 0, lo
        while day < hi:
            day += timedelta(days=1)
            count += day.weekday() < 5
        return step * count


def add_workdays(calendar: WorkingCalendar, start: date, n: int) -> date:
    try:
        return calendar.add_workdays(start, n)
    except CalendarUnknown:
        day, left = start, n
        while left > 0:
            day += timedelta(days=1)
            left -= day.weekday() < 5
        return day


def _first_kind(deadlines: Mapping[str, datetime], kinds: Iterable[str]) -> datetime | None:
    for kind in kinds:
        if kind in deadlines:
            return to_utc(deadlines[kind])
    return None


def receiving_node(events: Sequence[CaseEvent], registering_node: str) -> str:
    """The node that counts the case: the target of its latest hand-off (交办 down, 转送 sideways,
    上报 up, national transfer; by ownership epoch), else the node that registered it.

    The node that handles a case holds all of its handling; a node it was handed away from does not
    (replicas flow up only), so counting it there would leave that node's figures behind its parent's
    (docs/stats.md "Where a case counts")."""
    moves = [e for e in events if e.kind == "case_handed_off" and e.to_node]
    if not moves:
        return registering_node
    return max(moves, key=lambda e: (e.owner_epoch, e.version)).to_node


def case_snapshot(events: Sequence[CaseEvent]) -> CaseEvent | None:
    """The event the case's fields are read from: its registration, else the first hand-off that
    carried the case (a node that received it by 交办 or a national transfer never sees the registration)."""
    registrations = [e for e in events if e.kind == "case_registered"]
    if registrations:
        return min(registrations, key=lambda e: e.version)
    carried = [e for e in events if e.kind == "case_handed_off" and e.carries_case]
    return min(carried, key=lambda e: e.version) if carried else None


def fold_case(
    events: Sequence[CaseEvent],
    *,
    base: CaseFact | None,
    config: StatsConfig,
    calendar: WorkingCalendar,
) -> CaseFact | None:
    """Apply a case's events in version order to the registration snapshot ``base``.

    ``base`` is built from the case_registered event (``fact_from_registration``); None means
    it has not arrived yet, and the fact waits for it (the events are kept). Applying the whole
    ordered list every time makes duplicates and out-of-order arrivals harmless.
    """
    if base is None:
        return None
    fact = base
    for event in sorted(events, key=lambda e: (e.version, e.kind)):
        fact = _apply(fact, event, config, calendar)
    return fact


def _apply(fact: CaseFact, event: CaseEvent, config: StatsConfig, calendar: WorkingCalendar) -> CaseFact:
    at = to_utc(event.occurred_at)
    changes: dict[str, object] = {"version": max(fact.version, event.version), "updated_at": max(fact.updated_at, at)}
    kind = event.kind
    if kind == "work_order_changed" and event.action.startswith(FOLLOW_MAIN):
        # A merged case following its main case (并单): the main case's handling is counted there.
        return replace(fact, **changes)  # type: ignore[arg-type]
    if kind in ("work_order_created", "work_order_changed"):
        if event.unit_id:
            changes["unit_id"] = event.unit_id
        if event.work_order_id:
            changes["work_order_id"] = event.work_order_id
        accept_due = _first_kind(event.deadlines, ACCEPT_KINDS)
        if accept_due is not None:
            changes["accept_due"] = accept_due
        handling_due = _first_kind(event.deadlines, HANDLING_KINDS)
        if handling_due is not None:
            changes["handling_due"] = handling_due
    if kind == "work_order_created":
        if event.manual_queue:
            changes["state"] = "REGISTERED"
        elif event.unit_id:
            changes["state"] = "ASSIGNED"
            # Routing that assigns straight away accepts at the same moment (no separate notice due).
            if fact.accepted_at is None and "accept_notice" not in event.deadlines:
                changes["accepted_at"] = at
        else:
            changes["state"] = "TRANSFERRED"
    elif kind == "work_order_changed":
        if event.to_state:
            changes["state"] = event.to_state
        if event.action in ("accept", "refuse") and fact.accepted_at is None:
            changes["accepted_at"] = at
        elif event.action == "reply" and fact.replied_at is None:
            # The first reply counts for reply time; a redo after reopening does not restart it.
            changes["replied_at"] = at
            changes["reply_workdays"] = workdays_between(calendar, china_date(fact.submitted_at), china_date(at))
            window_end = add_workdays(calendar, china_date(at), config.satisfied_after_workdays)
            changes["rating_default_at"] = to_utc(end_of_day(window_end))
        elif event.action == "close":
            changes["closed_at"] = at
        elif event.action == "instruct" and fact.instructed_at is None:
            changes["instructed_at"] = at
        elif event.action == "consultation_held" and fact.consulted_at is None:
            changes["consulted_at"] = at
        elif event.action in ("reopen", "review"):
            changes["closed_at"] = None
    elif kind == "case_evaluated":
        changes["satisfaction"] = event.satisfaction
        if event.unit_id:
            changes["unit_id"] = event.unit_id
    elif kind == "supervision_issued":
        if event.level in SUPERVISION_LEVELS:
            changes["supervision_count"] = fact.supervision_count + 1
    elif kind == "case_withdrawn":
        changes["state"] = "WITHDRAWN"
    elif kind == "case_merged":
        changes["state"] = "MERGED"
    elif kind == "case_sampled":
        changes["tp_month"] = event.sample_month
    elif kind == "third_party_rated":
        changes["tp_rating"] = event.third_party_rating
        changes["tp_month"] = fact.tp_month or event.sample_month
    if event.late_assisting_units:
        late = {u for u in fact.assist_late_units.split(",") if u} | set(event.late_assisting_units)
        changes["assist_late_units"] = f",{','.join(sorted(late))},"
    return replace(fact, **changes)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- metrics

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
}
# Metrics where a smaller value is better (rankings order these ascending).
LOWER_IS_BETTER = frozenset(
    {"avg_reply_workdays", "p90_reply_workdays", "repeat_rate", "overdue", "supervised", "assist_late"}
)
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
    }
)


@dataclass
class Aggregates:
    """Counts of one slice; each field is the number of cases matching the predicate of the same name."""

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
)


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
    """The fact's 0/1 per ``COUNTERS`` entry as of ``as_of``: the definitions above, case by case.

    The same conditions exist in SQL (``store.predicates``) for set-based queries over many facts;
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
}
REPLY_DAY_METRICS = frozenset({"avg_reply_workdays", "p90_reply_workdays"})


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


# ---------------------------------------------------------------------------------- rankings


@dataclass(frozen=True)
class RankRow:
    key: str  # region code or unit id
    value: float
    cases: int
    rank: int  # 0 = not ranked (fewer than min_cases)
    change_vs_previous: float
    flagged: bool


def _ranked(
    metric: str, current: Mapping[str, Aggregates], min_cases: int
) -> tuple[list[tuple[str, float, int]], list[tuple[str, float, int]]]:
    rows = [(key, compute(metric, agg).value, agg.received) for key, agg in current.items()]
    eligible = [r for r in rows if r[2] >= max(min_cases, 1)]
    # Ties break by key so the same data always gives the same table.
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0
    eligible.sort(key=lambda r: (sign * r[1], r[0]))
    left_out = sorted((r for r in rows if r[2] < max(min_cases, 1)), key=lambda r: r[0])
    return eligible, left_out


def bottom_keys(metric: str, aggregates: Mapping[str, Aggregates], min_cases: int, n: int = 2) -> set[str]:
    eligible, _ = _ranked(metric, aggregates, min_cases)
    return {key for key, _, _ in eligible[-n:]} if len(eligible) > n else set()


def rank(
    metric: str,
    current: Mapping[str, Aggregates],
    previous: Mapping[str, Aggregates],
    *,
    min_cases: int,
) -> list[RankRow]:
    """一月一通报: rank by ``metric`` leaving out keys under ``min_cases`` received cases.

    ``change_vs_previous`` is value minus the previous period's value (0 with no previous cases).
    A key is flagged (约谈 list) when it is in the bottom two of this period *and* of the previous
    one, among those ranked in each (a table of two or fewer has no bottom two).
    """
    eligible, left_out = _ranked(metric, current, min_cases)
    bottom_now = {key for key, _, _ in eligible[-2:]} if len(eligible) > 2 else set()
    bottom_before = bottom_keys(metric, previous, min_cases)
    rows: list[RankRow] = []
    for position, (key, value, cases) in enumerate(eligible, start=1):
        before = previous.get(key)
        change = value - compute(metric, before).value if before is not None and before.received else 0.0
        rows.append(RankRow(key, value, cases, position, change, key in bottom_now and key in bottom_before))
    for key, value, cases in left_out:
        before = previous.get(key)
        change = value - compute(metric, before).value if before is not None and before.received else 0.0
        rows.append(RankRow(key, value, cases, 0, change, False))
    return rows
