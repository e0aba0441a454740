"""The warehouse's reads: metric sums from the rollups (corrected to ``as_of``) or the facts, the
drill-down's case ids, hotspot counts and texts, open work for the gauges. ``store.SqlWarehouse``
adds the writes.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    and_,
    case,
    false,
    func,
    not_,
    select,
)
from sqlalchemy.orm import Session

from services.common.regions import Tier
from services.common.timeutil import to_utc
from services.stats.domain import (
    COUNTERS,
    METRIC_COUNTERS,
    REPLY_DAY_METRICS,
    TERMINAL_STATES,
    Aggregates,
    counters,
)
from services.stats.models import (
    DAY_COLUMNS,
    ROLLUP_DAYS,
    CaseTextRow,
)
from services.stats.ports import Slice
from services.stats.store_sql import (
    CHILD_COLUMN,
    DATETIME_COLUMNS,
    DC,
    FACT_ROW_COLUMNS,
    N_COUNTERS,
    RD,
    ROLLUP_CHILD,
    RR,
    STALE_LOOKUP,
    TIER_COLUMN,
    TIER_NAME,
    F,
    R,
    counter_terms,
    day_split,
    fact_of,
    group_column,
    ingest_sql,
    predicates,
    slice_conditions,
    sqlite_value,
    utc_now,
)

# SUM statements by shape; see WarehouseQueries._sum_sql.
_SUM_SQL: dict[tuple[str, str, str, int, tuple[str, ...], str | None, bool, tuple[str, ...]], str] = {}

_INGEST_SQL: dict[tuple[str, str], str] = {}


class WarehouseQueries:
    def __init__(self, session: Session, *, clock: Callable[[], datetime] | None = None) -> None:
        self.session = session
        # The "as of" a fact's rollup contribution is computed at (the service clock).
        self.clock = clock or utc_now
        self._cursor: Any = None

    @property
    def dialect(self) -> str:
        return self.session.get_bind().dialect.name

    def _sql(self, name: str) -> str:
        key = (self.dialect, name)
        sql = _INGEST_SQL.get(key)
        if sql is None:
            sql = _INGEST_SQL[key] = ingest_sql(name, postgres=self.dialect == "postgresql")
        return sql

    def cursor(self) -> Any:
        """A DB-API cursor on the session's connection, in its transaction: the ingest path's
        statements are few and fixed, and SQLAlchemy's per-statement work was most of their cost."""
        if self._cursor is None:
            self._cursor = self.session.connection().connection.cursor()
        return self._cursor

    # ------------------------------------------------------------------ queries

    def aggregate(
        self, where: Slice, *, as_of: datetime, group_by: str | None, metrics: Sequence[str] | None = None
    ) -> dict[str, Aggregates]:
        """Counts per group: from the rollups for whole statistical months, else from the facts."""
        rollup_groups = group_by in (None, "unit", "category", "channel") or (
            group_by == "child" and where.tier in ROLLUP_CHILD
        )
        if where.months and rollup_groups:
            got = self.aggregate_rollups(where, as_of=as_of, group_by=group_by, metrics=metrics)
            if got is not None:
                return got
        return self.aggregate_facts(where, as_of=as_of, group_by=group_by)

    def _fact_row(self, values: Sequence[Any]) -> dict[str, Any]:
        """A raw ``FACT_ROW_COLUMNS`` row as a dict, datetimes as UTC datetimes on both backends."""
        row = dict(zip(FACT_ROW_COLUMNS, values, strict=True))
        if self.dialect != "postgresql":
            for name in DATETIME_COLUMNS:
                if row[name] is not None:
                    row[name] = datetime.fromisoformat(row[name]).replace(tzinfo=UTC)
        return row

    def facts_to_correct(self, as_of: datetime) -> list[dict[str, Any]] | None:
        """Facts whose rollup contribution differs from their counters as of ``as_of``: a window
        closed since they were rolled (``next_window_at < as_of``), or they were rolled after
        ``as_of``. Both by their own index; None when more than ``STALE_LOOKUP``."""
        t: Any = to_utc(as_of)
        if self.dialect != "postgresql":
            t = sqlite_value(t)
        cursor = self.cursor()
        found: list[dict[str, Any]] = []
        for name in ("stale_facts", "later_facts"):
            cursor.execute(self._sql(name), (t, STALE_LOOKUP + 1 - len(found)))
            found.extend(self._fact_row(r) for r in cursor.fetchall())
            if len(found) > STALE_LOOKUP:
                return None
        return found

    def aggregate_rollups(
        self, where: Slice, *, as_of: datetime, group_by: str | None, metrics: Sequence[str] | None = None
    ) -> dict[str, Aggregates] | None:
        """Whole statistical months from the rollups, corrected to ``as_of`` with the few facts
        whose contribution is not as of then; None when there are too many (read the facts).
        With ``metrics``, only the counters they read are summed (see ``ports.StatsUnitOfWork``)."""
        stale = self.facts_to_correct(as_of)
        if stale is None:
            return None
        wanted = list(range(N_COUNTERS))
        days = True
        if metrics is not None:
            needed = {"received", *(c for m in metrics for c in METRIC_COUNTERS.get(m, COUNTERS))}
            wanted = [i for i, c in enumerate(COUNTERS) if c in needed]
            days = any(m in REPLY_DAY_METRICS for m in metrics)
        columns = [COUNTERS[i] for i in wanted] + (list(DAY_COLUMNS) if days else [])
        months = list(where.months)
        tier_name = TIER_NAME[where.tier]
        # The fact attribute a group is keyed by (for the corrections) and the rollup column.
        fact_group = {None: None, "unit": "unit_id", "category": "category", "channel": "channel"}.get(
            group_by, ROLLUP_CHILD.get(where.tier) if group_by == "child" else None
        )
        filters = [(name, value) for name, value in (("category", where.category), ("channel", where.channel)) if value]
        if where.unit_id or group_by == "unit":
            # Units: the detailed rollups (a few rows per unit, category and channel of the region).
            table, group, region_column = R.name, fact_group, tier_name
            if where.unit_id:
                filters.insert(0, ("unit_id", where.unit_id))
        else:
            # Regions: a region's own rows in the region rollups, at most its children x
            # categories x channels per month whatever the number of cases.
            table, region_column = RR.name, "region_code"
            group = ("child_code" if group_by == "child" else fact_group) if fact_group else None
        out: dict[str, Aggregates] = {}
        cursor = self.cursor()
        params = (where.region_code, *months, *(value for _, value in filters))
        sql = self._sum_sql(table, region_column, len(months), [n for n, _ in filters], group, columns)
        cursor.execute(sql, params)
        offset = 1 if group else 0
        n_wanted = len(wanted)
        for row in cursor.fetchall():
            agg = out.setdefault(str(row[0] or "") if group else "", Aggregates())
            values = row[offset:]
            for j, i in enumerate(wanted):
                if values[j]:
                    setattr(agg, COUNTERS[i], getattr(agg, COUNTERS[i]) + int(values[j]))
            if days:
                for k in range(ROLLUP_DAYS):
                    if values[n_wanted + k]:
                        agg.reply_days[k] = agg.reply_days.get(k, 0) + int(values[n_wanted + k])
        # The rare replies after ROLLUP_DAYS working days, by exact day. (Same filters: a unit
        # filter took the detailed branch, which added it to them.)
        if days:
            sql = self._sum_sql(
                RD.name, tier_name, len(months), [n for n, _ in filters], fact_group, ("n",), by_days=True
            )
            cursor.execute(sql, params)
            over_offset = 1 if fact_group else 0
            for over_row in cursor.fetchall():
                name = str(over_row[0] or "") if fact_group else ""
                day, count = int(over_row[over_offset]), over_row[over_offset + 1]
                if count:
                    agg = out.setdefault(name, Aggregates())
                    agg.reply_days[day] = agg.reply_days.get(day, 0) + int(count)
        self._correct_stale(out, stale, where, as_of=as_of, wanted=wanted, fact_group=fact_group)
        # Keys whose facts all moved elsewhere keep a row of zeros; the facts would show no group.
        out = {k: v for k, v in out.items() if v.received}
        if group is None and not out:
            out[""] = Aggregates()
        return out

    @staticmethod
    def _correct_stale(
        out: dict[str, Aggregates],
        stale: Sequence[dict[str, Any]],
        where: Slice,
        *,
        as_of: datetime,
        wanted: Sequence[int],
        fact_group: str | None,
    ) -> None:
        """Add to ``out`` the difference of the facts whose counters as of ``as_of`` differ from what
        they added to the rollups (as of their ``rolled_at``)."""
        tier_name = TIER_NAME[where.tier]
        month_set = set(where.months)
        for fact_row in stale:
            if fact_row[tier_name] != where.region_code or fact_row["stat_month"] not in month_set:
                continue
            if any(value and fact_row[name] != value for name, value in (
                ("unit_id", where.unit_id), ("category", where.category), ("channel", where.channel)
            )):  # fmt: skip
                continue
            fact = fact_of(fact_row)
            now_counts = counters(fact, as_of)
            then_counts = counters(fact, fact_row["rolled_at"])
            if now_counts == then_counts:
                continue
            agg = out.setdefault(str(fact_row[fact_group] or "") if fact_group else "", Aggregates())
            for i in wanted:
                setattr(agg, COUNTERS[i], getattr(agg, COUNTERS[i]) + now_counts[i] - then_counts[i])

    def _sum_sql(
        self,
        table: str,
        region_column: str,
        months: int,
        filters: Sequence[str],
        group: str | None,
        values: Sequence[str],
        *,
        by_days: bool = False,
    ) -> str:
        """``SELECT [group,] [days,] sum(v)... FROM table WHERE region = ? AND stat_month IN (?...)
        AND filter = ?... [GROUP BY ...]``, built once per shape (78 sums composed per query
        through the expression language cost more than the query)."""
        cache_key = (self.dialect, table, region_column, months, tuple(filters), group, by_days, tuple(values))
        sql = _SUM_SQL.get(cache_key)
        if sql is None:
            mark = "%s" if self.dialect == "postgresql" else "?"
            keys = [c for c in (group, "days" if by_days else None) if c]
            conditions = [f"{region_column} = {mark}", f"stat_month IN ({', '.join([mark] * months)})"]
            conditions += [f"{name} = {mark}" for name in filters]
            sql = (
                f"SELECT {', '.join([*keys, *(f'sum({v})' for v in values)])} FROM {table} "
                f"WHERE {' AND '.join(conditions)}" + (f" GROUP BY {', '.join(keys)}" if keys else "")
            )
            _SUM_SQL[cache_key] = sql
        return sql

    def aggregate_facts(self, where: Slice, *, as_of: datetime, group_by: str | None) -> dict[str, Aggregates]:
        preds = predicates(as_of)
        conditions = slice_conditions(where)
        group = group_column(where, group_by)
        terms = counter_terms(as_of)
        sums = [func.coalesce(func.sum(terms[name]), 0).label(name) for name in COUNTERS]
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
        """The first ``limit`` ids of the slice's cases that meet ``predicate``, in id order.

        Read on the slice's own index (region or unit, statistical month) and sorted here: with
        ``ORDER BY case_id LIMIT`` PostgreSQL's generic plan walked the primary key over every
        stored fact and filtered out all but the slice's (issue 20)."""
        condition = predicates(as_of).get(predicate, false())
        found = self.session.scalars(select(F.case_id).where(*slice_conditions(where), condition))
        return heapq.nsmallest(limit, found)

    def hotspot_counts(
        self, where: Slice, *, baseline_start: datetime, window_start: datetime, end: datetime
    ) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
        """Cases per (region, category) submitted in [window_start, end) and in [baseline_start,
        window_start): whole UTC days from the daily counts, the pieces of days at the ends from
        the facts (an index range of less than a day each)."""
        recent: dict[tuple[str, str], int] = {}
        before: dict[tuple[str, str], int] = {}
        tier_name = TIER_NAME[where.tier]
        for target, start, stop in ((before, baseline_start, window_start), (recent, window_start, end)):
            days, pieces = day_split(to_utc(start), to_utc(stop))
            queries: list[Any] = []
            if days is not None:
                queries.append(
                    select(DC.c.region_code, DC.c.category, func.sum(DC.c.n))
                    .where(DC.c[tier_name] == where.region_code, DC.c.day >= days[0], DC.c.day < days[1])
                    .group_by(DC.c.region_code, DC.c.category)
                )
            for a, b in pieces:
                queries.append(
                    select(F.region_code, F.category, func.count())
                    .where(TIER_COLUMN[where.tier] == where.region_code, F.submitted_at >= a, F.submitted_at < b)
                    .group_by(F.region_code, F.category)
                )
            for query in queries:
                for region, category, count in self.session.execute(query):
                    if count:
                        cell = (str(region), str(category))
                        target[cell] = target.get(cell, 0) + int(count)
        return recent, before

    def window_cases(
        self, *, region_code: str, tier: Tier, category: str, start: datetime, end: datetime
    ) -> list[tuple[str, datetime, str]]:
        """(case id, submitted_at, unit id) of one hotspot cell's cases in [start, end)."""
        query = select(F.case_id, F.submitted_at, F.unit_id).where(
            TIER_COLUMN[tier] == region_code,
            F.region_code == region_code,
            F.category == category,
            F.submitted_at >= to_utc(start),
            F.submitted_at < to_utc(end),
        )
        return [(r[0], to_utc(r[1]), r[2] or "") for r in self.session.execute(query)]

    def late_assisting_units(self, where: Slice) -> dict[str, int]:
        counts: dict[str, int] = {}
        query = select(F.assist_late_units).where(*slice_conditions(where), F.assist_late_units != "")
        for (units,) in self.session.execute(query):
            for unit in {u for u in units.split(",") if u}:
                counts[unit] = counts.get(unit, 0) + 1
        return counts

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
