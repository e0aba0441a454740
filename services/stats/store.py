"""The warehouse's SQLAlchemy adapter: event keeping, fact upserts, and the metric predicates in SQL.

``predicates(as_of)`` is the SQL form of the definitions in ``services.stats.domain.DEFINITIONS``:
one boolean expression per counter of ``Aggregates``; the aggregate query sums them and the
drill-down lists the cases matching one of them, so a figure and its cases cannot disagree.

Rollups. ``stats_rollups`` holds, per (stat_month, province, city, county, unit, category,
channel), the sums of the same predicates over its facts, each fact counted *as of its own
``rolled_at``*, plus a histogram of reply working days. Every change of a fact, in the same
transaction, subtracts the old row's contribution and adds the new one (``_roll``: one
``INSERT ... SELECT ... GROUP BY ... ON CONFLICT DO UPDATE SET c = c + excluded.c`` built from
``predicates`` with ``t = rolled_at``), so the rollups cannot drift from the facts whatever the
order or repetition of events. A fact's counters as of a later moment differ from those as of
``rolled_at`` only once one of its deadlines passes; ``next_window_at`` is the first such
deadline. A whole-month query as of ``as_of`` (no earlier than every ``rolled_at``) therefore
reads the rollups and corrects them with the facts whose ``next_window_at < as_of`` (indexed; the
``stats-rollup`` timer keeps that set small by rolling those facts forward).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from lianxin.events.v1 import events_pb2
from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    bindparam,
    case,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    text,
    true,
    update,
)
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
    next_window,
)
from services.stats.handlers import Slice
from services.stats.hotspot import CaseSighting
from services.stats.models import (
    DAY_COLUMNS,
    ROLLUP_DAYS,
    ROLLUP_KEY,
    CaseEventRow,
    CaseFactRow,
    CaseTextRow,
    rollup_days_over,
    rollups,
)
from services.stats.translate import to_case_event

F = CaseFactRow
TIER_COLUMN = {Tier.PROVINCE: F.province_code, Tier.CITY: F.city_code, Tier.COUNTY: F.county_code}
CHILD_COLUMN = {Tier.PROVINCE: F.city_code, Tier.CITY: F.county_code, Tier.COUNTY: F.region_code}


def predicates(as_of: datetime | ColumnElement[Any]) -> dict[str, ColumnElement[bool]]:
    """The counters' conditions as of a moment, or as of a column (``F.rolled_at`` for rollups)."""
    t: Any = to_utc(as_of) if isinstance(as_of, datetime) else as_of
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


def _rollup_conditions(table: Any, where: Slice) -> list[ColumnElement[bool]]:
    """``where`` on a rollup table (both rollup tables share the key columns)."""
    tier = {Tier.PROVINCE: "province_code", Tier.CITY: "city_code", Tier.COUNTY: "county_code"}[where.tier]
    months = list(where.months)
    conditions: list[ColumnElement[bool]] = [table.c[tier] == where.region_code]
    conditions.append(table.c.stat_month == months[0] if len(months) == 1 else table.c.stat_month.in_(months))
    for name, value in (("unit_id", where.unit_id), ("category", where.category), ("channel", where.channel)):
        if value:
            conditions.append(table.c[name] == value)
    return conditions


def _fact_values(fact: CaseFact) -> dict[str, Any]:
    values = dict(fact.__dict__)
    for key, value in values.items():
        if isinstance(value, datetime):
            values[key] = to_utc(value)  # SQLite keeps no offset: store UTC everywhere
    return values


R = rollups
RD = rollup_days_over
ROLLUP_CHILD = {Tier.PROVINCE: R.c.city_code, Tier.CITY: R.c.county_code}
FACT_KEY = [getattr(F, name) for name in ROLLUP_KEY]
# Compiled ingest-path roll statements: (sql, positional names or None, default parameters).
_ROLL_SQL: dict[tuple[str, int], list[tuple[str, Any, dict[str, Any]]]] = {}
# Up to this many stale facts are corrected by case id; beyond, by a range on next_window_at.
STALE_LOOKUP = 5000


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _rollup_select(where: ColumnElement[bool], *, plus: Any | None, minus: Any | None, days: int) -> Select[Any]:
    """Per rollup key, counters as of ``plus`` minus counters as of ``minus`` (either may be absent),
    and ``days`` times each fact's reply-day bucket (1 add, -1 subtract, 0 leave)."""
    plus_p = predicates(plus) if plus is not None else None
    minus_p = predicates(minus) if minus is not None else None
    sums: list[Any] = []
    for name in COUNTERS:
        term: Any = literal(0)
        if plus_p is not None:
            term = case((plus_p[name], 1), else_=0)
        if minus_p is not None:
            term = term - case((minus_p[name], 1), else_=0)
        sums.append(func.coalesce(func.sum(term), 0).label(name))
    for k, column in enumerate(DAY_COLUMNS):
        bucket = case((F.reply_workdays == k, days), else_=0) if days else literal(0)
        sums.append(func.coalesce(func.sum(bucket), 0).label(column))
    return select(*FACT_KEY, *sums).where(where).group_by(*FACT_KEY)


class SqlWarehouse:
    def __init__(self, session: Session, *, clock: Callable[[], datetime] | None = None) -> None:
        self.session = session
        # The "as of" a fact's rollup contribution is computed at (the service clock).
        self.clock = clock or _utc_now

    # ------------------------------------------------------------------ rollups

    def _upsert(self, table: Any, query: Select[Any], value_columns: Sequence[str], keys: Sequence[str]) -> None:
        stmt = self._insert(table).from_select([*keys, *value_columns], query)
        stmt = stmt.on_conflict_do_update(
            index_elements=list(keys), set_={c: table.c[c] + stmt.excluded[c] for c in value_columns}
        )
        self.session.execute(stmt)

    def _roll(self, where: ColumnElement[bool], *, plus: Any | None, minus: Any | None, days: int) -> None:
        """Add (or subtract) the contribution of the facts matching ``where`` to the rollups."""
        counters = [*COUNTERS, *DAY_COLUMNS]
        self._upsert(R, _rollup_select(where, plus=plus, minus=minus, days=days), counters, ROLLUP_KEY)
        if days:
            over = (
                select(*FACT_KEY, F.reply_workdays, func.sum(days))
                .where(where, F.reply_workdays >= ROLLUP_DAYS)
                .group_by(*FACT_KEY, F.reply_workdays)
            )
            self._upsert(RD, over, ["n"], [*ROLLUP_KEY, "days"])

    def _roll_case(self, case_id: str, sign: int) -> None:
        """Add (1) or subtract (-1) one fact's contribution as of its rolled_at, on the ingest path.

        The two statements are big (a CASE per counter and day); building and compiling them per
        event cost more than running them, so each is compiled once per dialect and sign.
        """
        dialect = self.session.get_bind().dialect
        key = (dialect.name, sign)
        cached = _ROLL_SQL.get(key)
        if cached is None:
            this = F.case_id == bindparam("roll_case_id", value="")
            statements = []
            for table, query, values, keys in (
                (R, _rollup_select(this, plus=F.rolled_at if sign > 0 else None,
                                   minus=F.rolled_at if sign < 0 else None, days=sign),
                 [*COUNTERS, *DAY_COLUMNS], ROLLUP_KEY),
                (RD, select(*FACT_KEY, F.reply_workdays, func.sum(sign)).where(
                    this, F.reply_workdays >= ROLLUP_DAYS).group_by(*FACT_KEY, F.reply_workdays),
                 ["n"], [*ROLLUP_KEY, "days"]),
            ):  # fmt: skip
                stmt = self._insert(table).from_select([*keys, *values], query)
                stmt = stmt.on_conflict_do_update(
                    index_elements=list(keys), set_={c: table.c[c] + stmt.excluded[c] for c in values}
                )
                compiled = stmt.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
                statements.append((compiled.string, compiled.positiontup, dict(compiled.params)))
            cached = _ROLL_SQL[key] = statements
        connection = self.session.connection()
        for sql, positions, defaults in cached:
            params = {**defaults, "roll_case_id": case_id}
            if positions is not None:
                connection.exec_driver_sql(sql, tuple(params[name] for name in positions))
            else:
                connection.exec_driver_sql(sql, params)

    def roll_forward(self, *, as_of: datetime, limit: int = 5000) -> int:
        """Re-count as of ``as_of`` the facts one of whose windows closed since they were rolled.

        The ``stats-rollup`` timer calls this; queries are exact without it (they correct with
        the same facts), it only keeps that correction small. Returns the facts rolled.
        """
        t = to_utc(as_of)
        rows = self.session.execute(
            select(F.case_id, F.accept_due, F.handling_due, F.rating_default_at)
            .where(F.next_window_at < t)
            .order_by(F.next_window_at)
            .limit(limit)
            .with_for_update()
        ).all()
        if not rows:
            return 0
        ids = [r[0] for r in rows]
        self._roll(F.case_id.in_(ids), plus=t, minus=F.rolled_at, days=0)
        for case_id, accept_due, handling_due, rating_default_at in rows:
            window = next_window(t, [accept_due, handling_due, rating_default_at])
            self.session.execute(update(F).where(F.case_id == case_id).values(rolled_at=t, next_window_at=window))
        return len(rows)

    def rebuild_rollups(self) -> None:
        """Recompute every rollup row from the facts (after a bulk load or a refold)."""
        self.session.execute(RD.delete())
        self.session.execute(R.delete())
        self._roll(F.rolled_at.is_not(None), plus=F.rolled_at, minus=None, days=1)

    def rollups_usable(self, as_of: datetime) -> bool:
        """Rollups answer only as of a moment no earlier than every fact's ``rolled_at``."""
        latest = self.session.scalar(select(func.max(F.rolled_at)))
        return latest is None or to_utc(as_of) >= to_utc(latest)

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
        """Upsert the fact and move its rollup contribution in the same transaction."""
        if self.session.get_bind().dialect.name == "postgresql":
            # Two events of one case in parallel must not both subtract the same old contribution.
            self.session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": fact.case_id})
        now = to_utc(self.clock())
        self._roll_case(fact.case_id, -1)
        values = _fact_values(fact)
        values["rolled_at"] = now
        values["next_window_at"] = next_window(now, [fact.accept_due, fact.handling_due, fact.rating_default_at])
        stmt = self._insert(CaseFactRow.__table__).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["case_id"], set_={k: v for k, v in values.items() if k != "case_id"}
        )
        self.session.execute(stmt)
        self._roll_case(fact.case_id, 1)

    def save_text(self, case_id: str, text: str) -> None:
        stmt = self._insert(CaseTextRow.__table__).values(case_id=case_id, text=text).on_conflict_do_nothing()
        self.session.execute(stmt)

    def fact(self, case_id: str) -> CaseFactRow | None:
        return self.session.get(CaseFactRow, case_id)

    # ------------------------------------------------------------------ queries

    def aggregate(self, where: Slice, *, as_of: datetime, group_by: str | None) -> dict[str, Aggregates]:
        """Counts per group: from the rollups for whole statistical months, else from the facts."""
        rollup_groups = group_by in (None, "unit", "category", "channel") or (
            group_by == "child" and where.tier in ROLLUP_CHILD
        )
        if where.months and rollup_groups and self.rollups_usable(as_of):
            return self.aggregate_rollups(where, as_of=as_of, group_by=group_by)
        return self.aggregate_facts(where, as_of=as_of, group_by=group_by)

    def aggregate_rollups(self, where: Slice, *, as_of: datetime, group_by: str | None) -> dict[str, Aggregates]:
        t = to_utc(as_of)
        conditions = _rollup_conditions(R, where)
        columns = {"unit": "unit_id", "category": "category", "channel": "channel"}
        group: Any = None
        if group_by == "child":
            group = ROLLUP_CHILD[where.tier]
        elif group_by is not None:
            group = R.c[columns[group_by]]
        sums = [func.coalesce(func.sum(R.c[n]), 0).label(n) for n in (*COUNTERS, *DAY_COLUMNS)]
        query = select(*([group.label("key")] if group is not None else []), *sums).where(*conditions)
        if group is not None:
            query = query.group_by(group)
        out: dict[str, Aggregates] = {}
        for row in self.session.execute(query).mappings():
            agg = out.setdefault(str(row["key"] or "") if group is not None else "", Aggregates())
            for counter in COUNTERS:
                setattr(agg, counter, int(row[counter] or 0))
            for k, column in enumerate(DAY_COLUMNS):
                if row[column]:
                    agg.reply_days[k] = int(row[column])
        # The rare replies after ROLLUP_DAYS working days, by exact day.
        over_group: Any = RD.c[group.name] if group is not None else None
        over_conditions = _rollup_conditions(RD, where)
        over = select(*([over_group] if over_group is not None else []), RD.c.days, func.sum(RD.c.n)).where(
            *over_conditions
        )
        over = over.group_by(*([over_group] if over_group is not None else []), RD.c.days)
        for over_row in self.session.execute(over):
            name = str(over_row[0] or "") if group is not None else ""
            days, count = (over_row[1], over_row[2]) if group is not None else (over_row[0], over_row[1])
            if count:
                agg = out.setdefault(name, Aggregates())
                agg.reply_days[int(days)] = agg.reply_days.get(int(days), 0) + int(count)
        # Facts one of whose windows closed between their rolled_at and as_of: count them as of as_of.
        fact_group = _group_column(where, group_by)
        # Look the stale facts up by next_window_at alone first: with the slice's conditions the
        # planners prefer the region index and would scan the whole month. Normally (the
        # stats-rollup timer running) there are none or a few; past STALE_LOOKUP, one query.
        stale_ids = list(self.session.scalars(select(F.case_id).where(F.next_window_at < t).limit(STALE_LOOKUP + 1)))
        if not stale_ids:
            return {k: v for k, v in out.items() if v.received} or ({"": Aggregates()} if group is None else {})
        stale_where = F.case_id.in_(stale_ids) if len(stale_ids) <= STALE_LOOKUP else F.next_window_at < t
        stale = _rollup_select(
            and_(*slice_conditions(where), stale_where), plus=t, minus=F.rolled_at, days=0
        ).subquery()
        fix_key: Any = stale.c[fact_group.name] if fact_group is not None else None
        fix = select(*([fix_key] if fix_key is not None else []), *[func.sum(stale.c[n]) for n in COUNTERS])
        if fix_key is not None:
            fix = fix.group_by(fix_key)
        for fix_row in self.session.execute(fix):
            name = str(fix_row[0] or "") if fact_group is not None else ""
            deltas = fix_row[1:] if fact_group is not None else fix_row
            if all(d is None for d in deltas):
                continue
            agg = out.setdefault(name, Aggregates())
            for counter, delta in zip(COUNTERS, deltas, strict=True):
                setattr(agg, counter, getattr(agg, counter) + int(delta or 0))
        # Keys whose facts all moved elsewhere keep a row of zeros; the facts would show no group.
        out = {k: v for k, v in out.items() if v.received}
        if group is None and not out:
            out[""] = Aggregates()
        return out

    def aggregate_facts(self, where: Slice, *, as_of: datetime, group_by: str | None) -> dict[str, Aggregates]:
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
