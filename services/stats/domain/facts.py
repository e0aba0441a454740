"""A case in the warehouse: the events about it (``CaseEvent``), the fact folded from them (``CaseFact``),
and the working-day arithmetic the folding needs (Monday-Friday for years without an official calendar).

Folding is order-free: the whole ordered list of a case's events is applied every time, so a
duplicate or a late older version changes nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from services.common.calendar import CalendarUnknown, WorkingCalendar, end_of_day
from services.common.calendar import add_workdays as _add_workdays_by
from services.common.calendar import workdays_between as _workdays_between_by
from services.common.clock import china_date, to_utc
from services.common.regions import RegionTree, Tier
from services.stats.domain.months import StatsConfig, stat_month_of

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
    # 办事进度推送: a notice's end ("sent" or "given_up", progress_notice_settled); the citizen's
    # choice (progress_notices_set, and at registration from the case's flags)
    notice_outcome: str = ""
    notices_off: bool = False


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
    # 办事进度推送: the notices to the citizen sent, and given up after the last attempt (counts, not
    # 0/1: a case has several), and whether the citizen has turned them off (the latest choice).
    notices_sent: int = 0
    notices_failed: int = 0
    notices_off: bool = False


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
    # The fact's fields as a dict, changed in place and frozen once at the end: a new CaseFact
    # per event (dataclasses.replace) was the fold's main cost. ``_apply`` computes an event's
    # changes from the fields as they were before it, then writes them.
    fact = dict(base.__dict__)
    for event in sorted(events, key=lambda e: (e.version, e.kind)):
        _apply(fact, event, config, calendar)
    return CaseFact(**fact)


def _apply(fact: dict[str, Any], event: CaseEvent, config: StatsConfig, calendar: WorkingCalendar) -> None:
    at = to_utc(event.occurred_at)
    changes: dict[str, object] = {
        "version": max(fact["version"], event.version),
        "updated_at": max(fact["updated_at"], at),
    }
    kind = event.kind
    if kind == "work_order_changed" and event.action.startswith(FOLLOW_MAIN):
        # A merged case following its main case (并单): the main case's handling is counted there.
        fact.update(changes)
        return
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
            if fact["accepted_at"] is None and "accept_notice" not in event.deadlines:
                changes["accepted_at"] = at
        else:
            changes["state"] = "TRANSFERRED"
    elif kind == "work_order_changed":
        if event.to_state:
            changes["state"] = event.to_state
        if event.action in ("accept", "refuse") and fact["accepted_at"] is None:
            changes["accepted_at"] = at
        elif event.action == "reply" and fact["replied_at"] is None:
            # The first reply counts for reply time; a redo after reopening does not restart it.
            changes["replied_at"] = at
            changes["reply_workdays"] = workdays_between(calendar, china_date(fact["submitted_at"]), china_date(at))
            window_end = add_workdays(calendar, china_date(at), config.satisfied_after_workdays)
            changes["rating_default_at"] = to_utc(end_of_day(window_end))
        elif event.action == "close":
            changes["closed_at"] = at
        elif event.action == "instruct" and fact["instructed_at"] is None:
            changes["instructed_at"] = at
        elif event.action == "consultation_held" and fact["consulted_at"] is None:
            changes["consulted_at"] = at
        elif event.action in ("reopen", "review"):
            changes["closed_at"] = None
    elif kind == "case_evaluated":
        changes["satisfaction"] = event.satisfaction
        if event.unit_id:
            changes["unit_id"] = event.unit_id
    elif kind == "supervision_issued":
        if event.level in SUPERVISION_LEVELS:
            changes["supervision_count"] = fact["supervision_count"] + 1
    elif kind == "case_withdrawn":
        changes["state"] = "WITHDRAWN"
    elif kind == "case_merged":
        changes["state"] = "MERGED"
    elif kind == "case_sampled":
        changes["tp_month"] = event.sample_month
    elif kind == "third_party_rated":
        changes["tp_rating"] = event.third_party_rating
        changes["tp_month"] = fact["tp_month"] or event.sample_month
    elif kind == "progress_notice_settled":
        # One event per notice (keyed by the handling step's version): refolding counts each once.
        if event.notice_outcome == "sent":
            changes["notices_sent"] = fact["notices_sent"] + 1
        elif event.notice_outcome == "given_up":
            changes["notices_failed"] = fact["notices_failed"] + 1
    elif kind == "progress_notices_set":
        changes["notices_off"] = event.notices_off
    if event.late_assisting_units:
        late = {u for u in fact["assist_late_units"].split(",") if u} | set(event.late_assisting_units)
        changes["assist_late_units"] = f",{','.join(sorted(late))},"
    fact.update(changes)


def region_columns(
    tree: RegionTree, region_code: str, fallback_node: str, handed_away: Collection[str] = ()
) -> tuple[str, str, str, str]:
    """(region, province, city, county) codes, so any tier's subtree is one indexed equality.

    A case counts at the region of its matter when that lies in the subtree of ``fallback_node``,
    the node that handles it (docs/stats.md "Where a case counts"); otherwise, when its place is
    unresolved, or when a node below ``fallback_node`` whose subtree holds that region handed the
    case away (``handed_away``: it no longer hears of the handling), at that node's own region.
    Every tier holding the case places it the same way, so a tier's figures are the sum of its
    children's and none is counted twice.
    """
    inside = region_code in tree and (fallback_node not in tree or tree.contains(fallback_node, region_code))
    if inside and fallback_node in tree:
        inside = not any(
            node != fallback_node
            and node in tree
            and tree.contains(fallback_node, node)
            and tree.contains(node, region_code)
            for node in handed_away
        )
    code = region_code if inside else fallback_node
    province = city = county = ""
    for step in tree.path(code):
        tier = tree.get(step).tier
        if tier is Tier.PROVINCE:
            province = step
        elif tier is Tier.CITY:
            city = step
        elif tier is Tier.COUNTY:
            county = step
    return code, province, city, county


def fact_from_registration(
    event: CaseEvent, tree: RegionTree, config: StatsConfig, *, received_by: str = "", handed_away: Collection[str] = ()
) -> CaseFact:
    """The fact's base from the case's snapshot; ``received_by``: the node counting it (default: registering)."""
    region, province, city, county = region_columns(
        tree, event.region_code, received_by or event.registering_node, handed_away
    )
    submitted = to_utc(event.submitted_at or event.occurred_at)
    return CaseFact(
        case_id=event.case_id,
        region_code=region,
        province_code=province,
        city_code=city,
        county_code=county,
        registering_node=event.registering_node,
        channel=event.channel,
        category=event.category,
        state="REGISTERED",
        version=event.version,
        submitted_at=submitted,
        updated_at=to_utc(event.occurred_at),
        stat_month=stat_month_of(submitted, config),
        online=event.channel in ONLINE_CHANNELS,
        is_repeat=event.is_repeat,
        notices_off=event.notices_off,
    )
