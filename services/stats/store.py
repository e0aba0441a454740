"""The warehouse's SQLAlchemy adapter: event keeping, fact upserts, and the metric predicates in SQL.

``predicates(as_of)`` is the SQL form of the definitions in ``services.stats.domain.DEFINITIONS``:
one boolean expression per counter of ``Aggregates``; the aggregate query sums them and the
drill-down lists the cases matching one of them, so a figure and its cases cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from lianxin.events.v1 import events_pb2
from sqlalchemy import ColumnElement, and_, case, false, func, not_, or_, select, true
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.common.regions import Tier
from services.common.timeutil import to_utc
from services.stats.domain import (
    COUNTERS,
    NOT_OWED_STATES,
    SATISFIED_RATINGS,
    TERMINAL_STATES,
    Aggregates,
    CaseEvent,
    CaseFact,
)
from services.stats.handlers import Slice
from services.stats.hotspot import CaseSighting
from services.stats.models import CaseEventRow, CaseFactRow, CaseTextRow
from services.stats.translate import to_case_event

F = CaseFactRow
TIER_COLUMN = {Tier.PROVINCE: F.province_code, Tier.CITY: F.city_code, Tier.COUNTY: F.county_code}
CHILD_COLUMN = {Tier.PROVINCE: F.city_code, Tier.CITY: F.county_code, Tier.COUNTY: F.region_code}


def predicates(as_of: datetime) -> dict[str, ColumnElement[bool]]:
    t = to_utc(as_of)
    owed = and_(F.handling_due.is_not(None), F.state.not_in(sorted(NOT_OWED_STATES)))
    # A case withdrawn or merged before a decision owes none; a refusal is a decision (counted).
    acceptable = and_(F.accept_due.is_not(None), F.state.not_in(["WITHDRAWN", "MERGED"]))
    default_satisfied = and_(F.satisfaction == "", F.replied_at.is_not(None), F.rating_default_at < t)
    return {
        "received": true(),
        "online": F.online.is_(True),
        "repeat": F.is_repeat.is_(True),
        "accept_due": and_(acceptable, or_(F.accepted_at.is_not(None), F.accept_due < t)),
        "accept_on_time": and_(acceptable, F.accepted_at.is_not(None), F.accepted_at <= F.accept_due),
        "reply_due": and_(owed, or_(F.replied_at.is_not(None), F.handling_due < t)),
        "replied": and_(owed, F.replied_at.is_not(None)),
        "completion_due": and_(owed, or_(F.closed_at.is_not(None), F.handling_due < t)),
        "closed": and_(owed, F.closed_at.is_not(None)),
        "closed_on_time": and_(owed, F.closed_at.is_not(None), F.closed_at <= F.handling_due),
        "satisfaction_base": or_(F.satisfaction != "", default_satisfied),
        "satisfied": or_(F.satisfaction.in_(sorted(SATISFIED_RATINGS)), default_satisfied),
        "overdue": and_(owed, or_(and_(F.replied_at.is_(None), F.handling_due < t), F.replied_at > F.handling_due)),
        "supervised": F.supervision_count > 0,
        "replied_any": F.reply_workdays.is_not(None),
    }


def slice_conditions(where: Slice) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [TIER_COLUMN[where.tier] == where.region_code]
    if where.months:
        months = list(where.months)
        conditions.append(F.stat_month == months[0] if len(months) == 1 else F.stat_month.in_(months))
    else:
        if where.start is not None:
            conditions.append(F.submitted_at >= to_utc(where.start))
        if where.end is not None:
            conditions.append(F.submitted_at < to_utc(where.end))
    if where.unit_id:
        conditions.append(F.unit_id == where.unit_id)
    if where.category:
        conditions.append(F.category == where.category)
    if where.channel:
        conditions.append(F.channel == where.channel)
    return conditions


def _group_column(where: Slice, group_by: str | None) -> Any:
    if group_by is None:
        return None
    if group_by == "child":
        return CHILD_COLUMN[where.tier]
    columns = {"unit": F.unit_id, "category": F.category, "channel": F.channel, "region": F.region_code}
    return columns[group_by]


def _fact_values(fact: CaseFact) -> dict[str, Any]:
    values = dict(fact.__dict__)
    for key, value in values.items():
        if isinstance(value, datetime):
            values[key] = to_utc(value)  # SQLite keeps no offset: store UTC everywhere
    return values


class SqlWarehouse:
    def __init__(self, session: Session) -> None:
        self.session = session

    # ------------------------------------------------------------------ ingestion

    def _insert(self, table: Any) -> Any:
        dialect = self.session.get_bind().dialect.name
        return postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)

    def record_event(self, event: CaseEvent, *, source: str, body: bytes) -> bool:
        stmt = (
            self._insert(CaseEventRow.__table__)
            .values(case_id=event.case_id, version=event.version, event_type=event.kind, source=source, body=body)
            .on_conflict_do_nothing()
            .returning(CaseEventRow.case_id)
        )
        return self.session.execute(stmt).scalar_one_or_none() is not None

    def events_of(self, case_id: str) -> list[CaseEvent]:
        out: list[CaseEvent] = []
        for body in self.session.scalars(select(CaseEventRow.body).where(CaseEventRow.case_id == case_id)):
            env = events_pb2.EventEnvelope()
            env.ParseFromString(body)
            event = to_case_event(env)
            if event is not None:
                out.append(event)
        return out

    def save_fact(self, fact: CaseFact) -> None:
        values = _fact_values(fact)
        stmt = self._insert(CaseFactRow.__table__).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["case_id"], set_={k: v for k, v in values.items() if k != "case_id"}
        )
        self.session.execute(stmt)

    def save_text(self, case_id: str, text: str) -> None:
        stmt = self._insert(CaseTextRow.__table__).values(case_id=case_id, text=text).on_conflict_do_nothing()
        self.session.execute(stmt)

    def fact(self, case_id: str) -> CaseFactRow | None:
        return self.session.get(CaseFactRow, case_id)

    # ------------------------------------------------------------------ queries

    def aggregate(self, where: Slice, *, as_of: datetime, group_by: str | None) -> dict[str, Aggregates]:
        preds = predicates(as_of)
        conditions = slice_conditions(where)
        group = _group_column(where, group_by)
        sums = [func.coalesce(func.sum(case((preds[name], 1), else_=0)), 0).label(name) for name in COUNTERS]
        key = group.label("key") if group is not None else None
        query = select(*([key] if key is not None else []), *sums).where(*conditions)
        if group is not None:
            query = query.group_by(group)
        out: dict[str, Aggregates] = {}
        for row in self.session.execute(query).mappings():
            name = str(row["key"] or "") if group is not None else ""
            agg = Aggregates()
            for counter in COUNTERS:
                setattr(agg, counter, int(row[counter] or 0))
            out[name] = agg
        days_query = (
            select(*([group] if group is not None else []), F.reply_workdays, func.count())
            .where(*conditions, preds["replied_any"])
            .group_by(*([group] if group is not None else []), F.reply_workdays)
        )
        for day_row in self.session.execute(days_query):
            name = str(day_row[0] or "") if group is not None else ""
            days, count = (day_row[1], day_row[2]) if group is not None else (day_row[0], day_row[1])
            out.setdefault(name, Aggregates()).reply_days[int(days)] = int(count)
        if group is None and not out:
            out[""] = Aggregates()
        return out

    def case_ids(self, where: Slice, *, predicate: str, as_of: datetime, limit: int) -> list[str]:
        condition = predicates(as_of).get(predicate, false())
        query = select(F.case_id).where(*slice_conditions(where), condition).order_by(F.case_id).limit(limit)
        return list(self.session.scalars(query))

    def sightings(self, where: Slice) -> list[CaseSighting]:
        query = select(F.case_id, F.region_code, F.category, F.submitted_at).where(*slice_conditions(where))
        return [
            CaseSighting(case_id=r[0], region_code=r[1], category=r[2], submitted_at=to_utc(r[3]))
            for r in self.session.execute(query)
        ]

    def texts(self, case_ids: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        ids = list(case_ids)
        for i in range(0, len(ids), 500):
            query = select(CaseTextRow.case_id, CaseTextRow.text).where(CaseTextRow.case_id.in_(ids[i : i + 500]))
            out.update({r[0]: r[1] for r in self.session.execute(query)})
        return out

    def open_work(self, *, tier: Tier, region_code: str, as_of: datetime) -> dict[str, tuple[int, int, int]]:
        """Per child region (and "" for the whole region): (open, overdue, supervised and open)."""
        t = to_utc(as_of)
        is_open = F.state.not_in(sorted(TERMINAL_STATES))
        overdue = and_(F.handling_due.is_not(None), F.handling_due < t, F.replied_at.is_(None))
        supervised = F.supervision_count > 0
        child = CHILD_COLUMN[tier]
        query = (
            select(
                child,
                func.count(),
                func.coalesce(func.sum(case((overdue, 1), else_=0)), 0),
                func.coalesce(func.sum(case((supervised, 1), else_=0)), 0),
            )
            .where(TIER_COLUMN[tier] == region_code, is_open, not_(F.state == ""))
            .group_by(child)
        )
        out: dict[str, tuple[int, int, int]] = {}
        total = [0, 0, 0]
        for row in self.session.execute(query):
            counts = (int(row[1]), int(row[2]), int(row[3]))
            out[str(row[0] or region_code)] = counts
            total = [a + b for a, b in zip(total, counts, strict=True)]
        out[""] = (total[0], total[1], total[2])
        return out
