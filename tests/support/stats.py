"""``StatsUnitOfWork`` in memory: the warehouse's handlers tested without a database.

Sums come from ``domain.counters`` case by case (the Python form of the definitions); the SQL form
(``store_sql.predicates``, the rollups) is checked against it on real databases in
tests/integration/test_stats_rollups.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from services.common.clock import to_utc
from services.common.regions import Tier
from services.stats.domain import COUNTERS, Aggregates, CaseEvent, CaseFact, counters
from services.stats.ports import Slice

_TIER_FIELD = {Tier.PROVINCE: "province_code", Tier.CITY: "city_code", Tier.COUNTY: "county_code"}
_CHILD_FIELD = {Tier.PROVINCE: "city_code", Tier.CITY: "county_code", Tier.COUNTY: "region_code"}
_GROUP_FIELD = {"unit": "unit_id", "category": "category", "channel": "channel", "region": "region_code"}


@dataclass
class FakeStatsUnitOfWork:
    events: dict[tuple[str, int, str], tuple[Sequence[CaseEvent], str]] = field(default_factory=dict)
    facts: dict[str, CaseFact] = field(default_factory=dict)
    case_texts: dict[str, str] = field(default_factory=dict)

    def record_event(self, events: Sequence[CaseEvent], *, source: str, body: bytes) -> bool:
        key = (events[0].case_id, events[-1].version, events[0].kind)
        if key in self.events:
            return False
        self.events[key] = (tuple(events), source)
        return True

    def events_of(self, case_id: str) -> list[CaseEvent]:
        return [event for (case, _, _), (kept, _) in self.events.items() if case == case_id for event in kept]

    def save_fact(self, fact: CaseFact) -> None:
        self.facts[fact.case_id] = fact

    def save_text(self, case_id: str, text: str) -> None:
        self.case_texts.setdefault(case_id, text)

    def _in(self, where: Slice) -> list[CaseFact]:
        def inside(fact: CaseFact) -> bool:
            submitted = to_utc(fact.submitted_at)
            return (
                getattr(fact, _TIER_FIELD[where.tier]) == where.region_code
                and (not where.months or fact.stat_month in where.months)
                and (bool(where.months) or where.start is None or submitted >= to_utc(where.start))
                and (bool(where.months) or where.end is None or submitted < to_utc(where.end))
                and all(
                    not wanted or getattr(fact, name) == wanted
                    for name, wanted in (
                        ("unit_id", where.unit_id),
                        ("category", where.category),
                        ("channel", where.channel),
                    )
                )
            )

        return sorted((f for f in self.facts.values() if inside(f)), key=lambda f: f.case_id)

    def aggregate(
        self, where: Slice, *, as_of: datetime, group_by: str | None, metrics: Sequence[str] | None = None
    ) -> dict[str, Aggregates]:
        out: dict[str, Aggregates] = {}
        for fact in self._in(where):
            name = (
                "" if group_by is None else _CHILD_FIELD[where.tier] if group_by == "child" else _GROUP_FIELD[group_by]
            )
            agg = out.setdefault(getattr(fact, name) if name else "", Aggregates())
            for counter, hit in zip(COUNTERS, counters(fact, as_of), strict=True):
                setattr(agg, counter, getattr(agg, counter) + hit)
            if fact.reply_workdays is not None:
                agg.reply_days[fact.reply_workdays] = agg.reply_days.get(fact.reply_workdays, 0) + 1
        if group_by is None and not out:
            out[""] = Aggregates()
        return out

    def case_ids(self, where: Slice, *, predicate: str, as_of: datetime, limit: int) -> list[str]:
        def meets(fact: CaseFact) -> bool:
            if predicate == "replied_any":
                return fact.reply_workdays is not None
            if predicate == "matter":
                return fact.state != "MERGED"
            return predicate in COUNTERS and bool(counters(fact, as_of)[COUNTERS.index(predicate)])

        return [f.case_id for f in self._in(where) if meets(f)][:limit]

    def hotspot_counts(
        self, where: Slice, *, baseline_start: datetime, window_start: datetime, end: datetime
    ) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
        recent: dict[tuple[str, str], int] = {}
        before: dict[tuple[str, str], int] = {}
        for fact in self._in(Slice(where.region_code, where.tier)):
            at = to_utc(fact.submitted_at)
            target = recent if window_start <= at < end else before if baseline_start <= at < window_start else None
            if target is not None:
                cell = (fact.region_code, fact.category)
                target[cell] = target.get(cell, 0) + 1
        return recent, before

    def window_cases(
        self, *, region_code: str, tier: Tier, category: str, start: datetime, end: datetime
    ) -> list[tuple[str, datetime, str]]:
        return [
            (f.case_id, to_utc(f.submitted_at), f.unit_id)
            for f in self._in(Slice(region_code, tier, category=category, start=start, end=end))
            if f.region_code == region_code
        ]

    def texts(self, case_ids: Sequence[str]) -> dict[str, str]:
        return {case_id: self.case_texts[case_id] for case_id in case_ids if case_id in self.case_texts}

    def late_assisting_units(self, where: Slice) -> dict[str, int]:
        counts: dict[str, int] = {}
        for fact in self._in(where):
            for unit in {u for u in fact.assist_late_units.split(",") if u}:
                counts[unit] = counts.get(unit, 0) + 1
        return counts
