"""The warehouse's SQLAlchemy adapter: event keeping, fact upserts, the derived tables, the metric
predicates in SQL.

``predicates(as_of)`` is the SQL form of the definitions in ``services.stats.domain.DEFINITIONS``
(``domain.counters`` is the same, case by case, in Python): one boolean expression per counter of
``Aggregates``; the fact queries sum them and the drill-down lists the cases matching one of them,
so a figure and its cases cannot disagree.

Derived tables (see docs/stats.md, "Rollups"), all changed in the fact's own transaction:

* ``stats_rollups``: per (stat_month, province, city, county, unit, category, channel), the sums
  of the counters of its facts, each fact counted *as of its own ``rolled_at``*, and a histogram
  of reply working days (``stats_rollup_days_over`` for 64 and more); read for units;
* ``stats_region_rollups``: the same sums per (stat_month, region of any tier, child region,
  category, channel), at most a few thousand rows per region and month whatever the number of
  cases; read for regions, their children, categories and channels;
* ``stats_daily_counts``: cases per (UTC day, region, category), for hotspots.

An event computes in Python the old fact row's contribution (as of its rolled_at) and the new
one's (as of now) and upserts the difference, only the columns that change, one statement per
table. A fact's counters as of a later moment differ from those as of ``rolled_at`` only once one
of its deadlines passes; ``next_window_at`` is the first such deadline. A whole-month query as of
``as_of`` reads the rollups and corrects them with the facts whose ``next_window_at < as_of`` or
``rolled_at > as_of`` (both indexed; the ``stats-rollup`` timer keeps the first set small by
rolling those facts forward).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import fields
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from lianxin.events.v1 import events_pb2
from sqlalchemy import (
    ColumnElement,
    Date,
    DateTime,
    Select,
    Table,
    and_,
    bindparam,
    case,
    cast,
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
    METRIC_COUNTERS,
    NOT_OWED_STATES,
    REPLY_DAY_METRICS,
    SATISFIED_RATINGS,
    TERMINAL_STATES,
    Aggregates,
    CaseEvent,
    CaseFact,
    counters,
    next_window,
)
from services.stats.handlers import Slice
from services.stats.models import (
    DAILY_KEY,
    DAY_COLUMNS,
    DERIVED_TABLES,
    REGION_ROLLUP_KEY,
    ROLLUP_DAYS,
    ROLLUP_KEY,
    ROLLUP_VALUES,
    CaseFactRow,
    CaseTextRow,
    daily_counts,
    region_rollups,
    rollup_days_over,
    rollups,
)
from services.stats.translate import to_case_event

F = CaseFactRow
FACT_TABLE: Table = CaseFactRow.__table__  # type: ignore[assignment]
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
        "merged": F.state == "MERGED",
        "assist_late": F.assist_late_units != "",
        "instructed": F.instructed_at.is_not(None),
        "consulted": F.consulted_at.is_not(None),
        "tp_sampled": F.tp_month != "",
        "tp_rated": F.tp_rating != "",
        "tp_satisfied": F.tp_rating.in_(sorted(SATISFIED_RATINGS)),
        "replied_any": F.reply_workdays.is_not(None),
        "matter": F.state != "MERGED",
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


def _day_split(start: datetime, end: datetime) -> tuple[tuple[date, date] | None, list[tuple[datetime, datetime]]]:
    """[start, end) as whole UTC days [first, last) and the pieces of days left at its ends."""
    if end <= start:
        return None, []
    midnight = datetime.combine(start.date(), time(), UTC)
    first = midnight if midnight == start else midnight + timedelta(days=1)
    last = datetime.combine(end.date(), time(), UTC)
    if first >= last:
        return None, [(start, end)]
    pieces = [(start, first)] if start < first else []
    if last < end:
        pieces.append((last, end))
    return (first.date(), last.date()), pieces


def _fact_values(fact: CaseFact) -> dict[str, Any]:
    values = dict(fact.__dict__)
    for key, value in values.items():
        if isinstance(value, datetime):
            values[key] = to_utc(value)  # SQLite keeps no offset: store UTC everywhere
    return values


R = rollups
RR = region_rollups
RD = rollup_days_over
DC = daily_counts
ROLLUP_CHILD = {Tier.PROVINCE: "city_code", Tier.CITY: "county_code"}
TIER_NAME = {Tier.PROVINCE: "province_code", Tier.CITY: "city_code", Tier.COUNTY: "county_code"}
FACT_KEY = [getattr(F, name) for name in ROLLUP_KEY]
FACT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(CaseFact))
FACT_COLUMNS = [getattr(F, name) for name in (*FACT_FIELDS, "rolled_at")]
N_COUNTERS = len(COUNTERS)
# Up to this many facts needing a correction (see aggregate_rollups) are corrected one by one;
# beyond, the query reads the facts instead.
STALE_LOOKUP = 5000
# Rows per multi-row upsert statement (more go as an executemany of single-row statements).
UPSERT_VALUES_ROWS = 32
# Upsert SQL by (dialect, table, keys, columns, rows); see SqlWarehouse._upsert_sql.
_UPSERT_SQL: dict[tuple[str, str, tuple[str, ...], tuple[str, ...], int], str] = {}
_SUM_SQL: dict[tuple[str, str, str, int, tuple[str, ...], str | None, bool, tuple[str, ...]], str] = {}
# Statements sent as one on PostgreSQL by SqlWarehouse.run (an event's fact and rollups: 3 to 6).
COMBINED_STATEMENTS = 8
DAILY_PATH = ("province_code", "city_code", "county_code")


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _fact_of(row: Any) -> CaseFact:
    return CaseFact(**{name: row[name] for name in FACT_FIELDS})


def _utc_day(value: datetime) -> date:
    return to_utc(value).date()


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


def region_rollup_keys(key: Sequence[str]) -> list[tuple[str, ...]]:
    """The region rollup rows a detailed rollup key adds to: (stat_month, region, child, category,
    channel) for its province, city and county, each with the next tier's code ("" when none)."""
    month, province, city, county, _unit, category, channel = key
    path = [province, city, county]
    return [
        (month, code, path[i + 1] if i + 1 < len(path) else "", category, channel)
        for i, code in enumerate(path)
        if code
    ]


FACT_ROW_COLUMNS: tuple[str, ...] = (*FACT_FIELDS, "rolled_at", "next_window_at")
DATETIME_COLUMNS: tuple[str, ...] = tuple(c.name for c in CaseFactRow.__table__.columns if isinstance(c.type, DateTime))
_INGEST_SQL: dict[tuple[str, str], str] = {}


def _ingest_sql(name: str, *, postgres: bool) -> str:
    mark = "%s" if postgres else "?"
    columns = ", ".join(FACT_ROW_COLUMNS)
    if name == "record_event":
        insert = "INSERT INTO case_events (case_id, version, event_type, source, body)"
        if postgres:
            return (
                "WITH case_lock AS (SELECT pg_advisory_xact_lock(hashtext(%s))) "
                f"{insert} SELECT %s, %s, %s, %s, %s FROM case_lock ON CONFLICT DO NOTHING RETURNING case_id"
            )
        return f"{insert} VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING case_id"
    if name == "events_of":
        return f"SELECT body FROM case_events WHERE case_id = {mark}"
    if name == "fact_row":
        return f"SELECT {columns} FROM case_facts WHERE case_id = {mark}" + (" FOR UPDATE" if postgres else "")
    if name in ("stale_facts", "later_facts"):
        column, compare = ("next_window_at", "<") if name == "stale_facts" else ("rolled_at", ">")
        # Ordered by the indexed column: with a bare LIMIT, PostgreSQL's generic plan (a third of
        # the table guessed to match) read every fact in a sequential scan to find none (issue 20).
        return f"SELECT {columns} FROM case_facts WHERE {column} {compare} {mark} ORDER BY {column} LIMIT {mark}"
    if name == "save_fact":
        updates = ", ".join(f"{c} = excluded.{c}" for c in FACT_ROW_COLUMNS if c != "case_id")
        marks = ", ".join([mark] * len(FACT_ROW_COLUMNS))
        return f"INSERT INTO case_facts ({columns}) VALUES ({marks}) ON CONFLICT (case_id) DO UPDATE SET {updates}"
    raise KeyError(name)


def _sqlite_value(value: Any) -> Any:
    """A value as SQLAlchemy's SQLite types store it (UTC datetimes as text that sorts in time)."""
    if isinstance(value, datetime):
        return to_utc(value).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


class RollupDelta:
    """Changes to the derived tables from facts entering (+1) or leaving (-1) them, summed per key
    in Python and written with one upsert per table (only the columns that change)."""

    def __init__(self) -> None:
        self.main: dict[tuple[str, ...], list[int]] = {}
        self.over: dict[tuple[tuple[str, ...], int], int] = {}
        self.daily: dict[tuple[date, str, str], list[Any]] = {}

    def add(self, fact: CaseFact, as_of: datetime | None, sign: int, *, days: bool = True, daily: bool = True) -> None:
        """``sign`` times the fact's counters as of ``as_of`` (None: the fact is not in the rollups),
        with ``days`` its reply-day bucket, with ``daily`` its hotspot count (neither depends on time)."""
        if as_of is not None:
            self._add_counters(fact, as_of, sign, days=days)
        if daily:
            day_key = (_utc_day(fact.submitted_at), fact.region_code, fact.category)
            entry = self.daily.setdefault(day_key, [0, fact.province_code, fact.city_code, fact.county_code])
            entry[0] += sign

    def _add_counters(self, fact: CaseFact, as_of: datetime, sign: int, *, days: bool) -> None:
        key = tuple(getattr(fact, name) for name in ROLLUP_KEY)
        values = self.main.get(key)
        if values is None:
            values = self.main[key] = [0] * len(ROLLUP_VALUES)
        for i, hit in enumerate(counters(fact, as_of)):
            if hit:
                values[i] += sign
        if days and fact.reply_workdays is not None and fact.reply_workdays >= 0:
            if fact.reply_workdays < ROLLUP_DAYS:
                values[N_COUNTERS + fact.reply_workdays] += sign
            else:
                over_key = (key, fact.reply_workdays)
                self.over[over_key] = self.over.get(over_key, 0) + sign

    def apply(self, store: SqlWarehouse, *, first: tuple[str, tuple[Any, ...]] | None = None) -> None:
        """Write the changes (after ``first``, a statement of the caller's own), one statement
        per table and 32 keys; on PostgreSQL all in one statement when few."""
        main = {k: v for k, v in self.main.items() if any(v)}
        region: dict[tuple[str, ...], list[int]] = {}
        for key, values in main.items():
            for region_key in region_rollup_keys(key):
                total = region.get(region_key)
                if total is None:
                    region[region_key] = list(values)
                else:
                    for i, v in enumerate(values):
                        total[i] += v
        pieces = [first] if first is not None else []
        pieces += store.sum_upserts(R, ROLLUP_KEY, main)
        pieces += store.sum_upserts(RR, REGION_ROLLUP_KEY, {k: v for k, v in region.items() if any(v)})
        over = {(*key, days): [n] for (key, days), n in self.over.items() if n}
        pieces += store.sum_upserts(RD, (*ROLLUP_KEY, "days"), over, ("n",))
        daily = {(*k, *v[1:]): [v[0]] for k, v in self.daily.items() if v[0]}
        pieces += store.sum_upserts(DC, DAILY_KEY, daily, ("n",), extra=DAILY_PATH)
        store.run(pieces)


def recreate_derived_tables(bind: Any) -> None:
    """Drop the tables derived from the facts, create them in their current shape and rebuild them.

    For migrations that change their shape (a new counter): they hold nothing the facts do not.
    """
    for table in reversed(DERIVED_TABLES):
        table.drop(bind, checkfirst=True)
    for table in DERIVED_TABLES:
        table.create(bind)
    with Session(bind=bind) as session:
        SqlWarehouse(session).rebuild_rollups()


class SqlWarehouse:
    def __init__(self, session: Session, *, clock: Callable[[], datetime] | None = None) -> None:
        self.session = session
        # The "as of" a fact's rollup contribution is computed at (the service clock).
        self.clock = clock or _utc_now
        self._cursor: Any = None

    @property
    def dialect(self) -> str:
        return self.session.get_bind().dialect.name

    def insert(self, table: Any) -> Any:
        return postgresql.insert(table) if self.dialect == "postgresql" else sqlite.insert(table)

    # ------------------------------------------------------------------ rollups

    def sum_upserts(
        self,
        table: Any,
        keys: Sequence[str],
        rows: dict[tuple[Any, ...], list[int]],
        value_columns: Sequence[str] = ROLLUP_VALUES,
        *,
        extra: Sequence[str] = (),
    ) -> list[tuple[str, tuple[Any, ...]]]:
        """Statements adding ``rows`` (key, then ``extra`` columns set on insert only → values in
        ``value_columns`` order) to ``table``, touching only the columns some row changes. Rows go
        in key order, so two transactions lock shared rows in the same order (no deadlock)."""
        if not rows:
            return []
        used = sorted({i for values in rows.values() for i, v in enumerate(values) if v})
        columns = [value_columns[i] for i in used]
        sqlite_dates = self.dialect != "postgresql"
        params = [
            (*(k.isoformat() if sqlite_dates and isinstance(k, date) else k for k in key), *(values[i] for i in used))
            for key, values in sorted(rows.items())
        ]
        out = []
        for i in range(0, len(params), UPSERT_VALUES_ROWS):
            chunk = params[i : i + UPSERT_VALUES_ROWS]
            sql = self._upsert_sql(table.name, keys, extra, columns, len(chunk))
            out.append((sql, tuple(v for row in chunk for v in row)))
        return out

    def run(self, pieces: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
        """Execute statements; on PostgreSQL up to ``COMBINED_STATEMENTS`` as one, each in a
        WITH clause (they touch different tables; one round trip instead of several)."""
        cursor = self.cursor()
        if self.dialect == "postgresql" and 1 < len(pieces) <= COMBINED_STATEMENTS:
            ctes = ", ".join(f"w{i} AS ({sql})" for i, (sql, _) in enumerate(pieces[:-1]))
            params = tuple(v for _, piece_params in pieces for v in piece_params)
            cursor.execute(f"WITH {ctes} {pieces[-1][0]}", params)
            return
        for sql, piece_params in pieces:
            cursor.execute(sql, piece_params)

    def cursor(self) -> Any:
        """A DB-API cursor on the session's connection, in its transaction: the ingest path's
        statements are few and fixed, and SQLAlchemy's per-statement work was most of their cost."""
        if self._cursor is None:
            self._cursor = self.session.connection().connection.cursor()
        return self._cursor

    def _upsert_sql(
        self, table: str, keys: Sequence[str], extra: Sequence[str], columns: Sequence[str], rows: int
    ) -> str:
        """``INSERT ... VALUES (...) x rows ... ON CONFLICT (keys) DO UPDATE SET c = c + excluded.c``,
        built once per shape: composing and compiling it per event cost more than running it."""
        cache_key = (self.dialect, table, tuple(keys), tuple(columns), rows)
        sql = _UPSERT_SQL.get(cache_key)
        if sql is None:
            # Unquoted names (all plain lower-case words, none reserved) and an alias keep the
            # statement short: psycopg caches its parse of statements up to 4 kB only.
            mark = "%s" if self.dialect == "postgresql" else "?"
            names = ", ".join((*keys, *extra, *columns))
            row = "(" + ", ".join([mark] * (len(keys) + len(extra) + len(columns))) + ")"
            updates = ", ".join(f"{c} = t.{c} + excluded.{c}" for c in columns)
            sql = (
                f"INSERT INTO {table} AS t ({names}) VALUES {', '.join([row] * rows)} "
                f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
            )
            if len(_UPSERT_SQL) > 4096:
                _UPSERT_SQL.clear()
            _UPSERT_SQL[cache_key] = sql
        return sql

    def roll_forward(self, *, as_of: datetime, limit: int = 5000) -> int:
        """Re-count as of ``as_of`` the facts one of whose windows closed since they were rolled.

        The ``stats-rollup`` timer calls this; queries are exact without it (they correct with
        the same facts), it only keeps that correction small. Returns the facts rolled.
        """
        t = to_utc(as_of)
        rows = (
            self.session.execute(
                select(*FACT_COLUMNS)
                .where(F.next_window_at < t)
                .order_by(F.next_window_at)
                .limit(limit)
                .with_for_update()
            )
            .mappings()
            .all()
        )
        if not rows:
            return 0
        delta = RollupDelta()
        moves = []
        for row in rows:
            fact = _fact_of(row)
            delta.add(fact, t, 1, days=False, daily=False)
            delta.add(fact, row["rolled_at"], -1, days=False, daily=False)
            window = next_window(t, [fact.accept_due, fact.handling_due, fact.rating_default_at])
            moves.append({"b_case_id": fact.case_id, "b_rolled_at": t, "b_window": window})
        delta.apply(self)
        table = FACT_TABLE
        # Core executemany (one prepared statement, pipelined), not the ORM's per-row bulk update.
        self.session.connection().execute(
            update(table)
            .where(table.c.case_id == bindparam("b_case_id"))
            .values(rolled_at=bindparam("b_rolled_at"), next_window_at=bindparam("b_window")),
            moves,
        )
        return len(rows)

    def rebuild_rollups(self) -> None:
        """Recompute every derived table from the facts, set-based (after a bulk load, to repair
        after editing facts by hand, or when a migration changes their shape)."""
        for table in (DC, RD, RR, R):
            self.session.execute(table.delete())
        if self.session.execute(select(F.case_id).limit(1)).first() is None:
            # No facts, nothing to roll up: a new node's migrations (three rebuilds) skip building
            # the queries, which took most of a node's start (services/host.py starts hundreds).
            return
        rolled = F.rolled_at.is_not(None)
        query = _rollup_select(rolled, plus=F.rolled_at, minus=None, days=1)
        self.session.execute(R.insert().from_select([*ROLLUP_KEY, *COUNTERS, *DAY_COLUMNS], query))
        over = (
            select(*FACT_KEY, F.reply_workdays, func.count())
            .where(rolled, F.reply_workdays >= ROLLUP_DAYS)
            .group_by(*FACT_KEY, F.reply_workdays)
        )
        self.session.execute(RD.insert().from_select([*ROLLUP_KEY, "days", "n"], over))
        # Region rollups from the detailed ones: per tier, the region's code and its child's.
        for tier_name, child_name in (
            ("province_code", "city_code"),
            ("city_code", "county_code"),
            ("county_code", None),
        ):
            child: Any = R.c[child_name] if child_name else literal("")
            region_query = (
                select(
                    R.c.stat_month, R.c[tier_name], child, R.c.category, R.c.channel,
                    *[func.sum(R.c[c]) for c in ROLLUP_VALUES],
                )
                .where(R.c[tier_name] != "")
                .group_by(R.c.stat_month, R.c[tier_name], *([child] if child_name else []), R.c.category, R.c.channel)
            )  # fmt: skip
            self.session.execute(RR.insert().from_select([*REGION_ROLLUP_KEY, *ROLLUP_VALUES], region_query))
        day = self._day_expression(F.submitted_at)
        daily = select(
            day, F.region_code, F.category, func.max(F.province_code), func.max(F.city_code),
            func.max(F.county_code), func.count(),
        ).group_by(day, F.region_code, F.category)  # fmt: skip
        self.session.execute(
            DC.insert().from_select(
                ["day", "region_code", "category", "province_code", "city_code", "county_code", "n"], daily
            )
        )

    def _day_expression(self, column: Any) -> Any:
        """The UTC calendar day of a timestamp column (SQLite keeps UTC text, PostgreSQL timestamptz)."""
        if self.dialect == "postgresql":
            return cast(func.timezone("UTC", column), Date)
        return func.date(column)

    def refresh_planner_statistics(self) -> list[str]:
        """ANALYZE the warehouse tables that changed by more than a tenth since their last ANALYZE.

        PostgreSQL's autovacuum does the same when it is on (the default); this keeps plans right
        where it is off, and on SQLite, which has no background ANALYZE at all. Returns the tables
        analysed."""
        names = [CaseFactRow.__tablename__, R.name, RR.name, RD.name, DC.name]
        stale: list[str] = []
        if self.dialect == "postgresql":
            rows = self.session.execute(
                text(
                    "SELECT relname, n_live_tup, n_mod_since_analyze, last_analyze, last_autoanalyze "
                    "FROM pg_stat_user_tables WHERE schemaname = current_schema() AND relname = ANY(:names)"
                ),
                {"names": names},
            )
            for name, live, modified, analysed, auto in rows:
                never = analysed is None and auto is None
                if (never and (live or modified)) or modified > 0.1 * live + 1000:
                    stale.append(name)
            for name in stale:
                self.session.execute(text(f'ANALYZE "{name}"'))
            return stale
        # sqlite_stat1.stat starts with the table's row count at the last ANALYZE.
        known: dict[str, int] = {}
        if self.session.execute(text("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'")).first():
            query = text("SELECT tbl, max(CAST(stat AS INTEGER)) FROM sqlite_stat1 GROUP BY tbl")
            known = {str(r[0]): int(r[1] or 0) for r in self.session.execute(query)}
        for name in names:
            rows_now = self.session.scalar(text(f'SELECT max(rowid) FROM "{name}"')) or 0
            before = known.get(name, 0)
            if rows_now > 1.1 * before + 1000:
                stale.append(name)
        if stale:
            # Sampled statistics (SQLite >= 3.32): enough for the planner, seconds instead of minutes.
            self.session.execute(text("PRAGMA analysis_limit = 1000"))
            for name in stale:
                self.session.execute(text(f'ANALYZE "{name}"'))
        return stale

    # ------------------------------------------------------------------ ingestion

    # The statements of the ingest path are plain SQL built once per dialect: composing and
    # compiling them per event through the expression language cost more than running them.

    def _sql(self, name: str) -> str:
        key = (self.dialect, name)
        sql = _INGEST_SQL.get(key)
        if sql is None:
            sql = _INGEST_SQL[key] = _ingest_sql(name, postgres=self.dialect == "postgresql")
        return sql

    def record_event(self, event: CaseEvent, *, source: str, body: bytes) -> bool:
        """Keep the event; False when (case_id, version, kind) was already there.

        On PostgreSQL the same statement first takes a per-case transaction lock: events of one
        case are folded one at a time, and the one waiting sees this one's event once it goes on
        (SQLite writers are serialised by BEGIN IMMEDIATE anyway)."""
        params: tuple[Any, ...] = (event.case_id, event.version, event.kind, source, body)
        if self.dialect == "postgresql":
            params = (event.case_id, *params)
        cursor = self.cursor()
        cursor.execute(self._sql("record_event"), params)
        return cursor.fetchone() is not None

    def events_of(self, case_id: str) -> list[CaseEvent]:
        out: list[CaseEvent] = []
        cursor = self.cursor()
        cursor.execute(self._sql("events_of"), (case_id,))
        for (body,) in cursor.fetchall():
            env = events_pb2.EventEnvelope()
            env.ParseFromString(body)
            event = to_case_event(env)
            if event is not None:
                out.append(event)
        return out

    def save_fact(self, fact: CaseFact) -> None:
        """Upsert the fact and move its contribution to the derived tables in the same transaction:
        the old row's counters as of its rolled_at out, the new ones as of now in."""
        now = to_utc(self.clock())
        postgres = self.dialect == "postgresql"
        cursor = self.cursor()
        # FOR UPDATE: the stats-rollup timer must not roll this row between this read and the upsert.
        cursor.execute(self._sql("fact_row"), (fact.case_id,))
        old = cursor.fetchone()
        delta = RollupDelta()
        if old is not None:
            row = self._fact_row(old)
            delta.add(_fact_of(row), row["rolled_at"], -1)
        delta.add(fact, now, 1)
        values = _fact_values(fact)
        values["rolled_at"] = now
        values["next_window_at"] = next_window(now, [fact.accept_due, fact.handling_due, fact.rating_default_at])
        params = [values[name] for name in FACT_ROW_COLUMNS]
        if not postgres:
            params = [_sqlite_value(v) for v in params]
        delta.apply(self, first=(self._sql("save_fact"), tuple(params)))

    def save_text(self, case_id: str, text: str) -> None:
        stmt = self.insert(CaseTextRow.__table__).values(case_id=case_id, text=text).on_conflict_do_nothing()
        self.session.execute(stmt)

    def fact(self, case_id: str) -> CaseFactRow | None:
        return self.session.get(CaseFactRow, case_id)

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
            t = _sqlite_value(t)
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
        With ``metrics``, only the counters they read are summed (see ``handlers.WarehouseUnitOfWork``)."""
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
        # Facts whose counters as of as_of differ from what they added: add the difference.
        month_set = set(months)
        for fact_row in stale:
            if fact_row[tier_name] != where.region_code or fact_row["stat_month"] not in month_set:
                continue
            if any(value and fact_row[name] != value for name, value in (
                ("unit_id", where.unit_id), ("category", where.category), ("channel", where.channel)
            )):  # fmt: skip
                continue
            fact = _fact_of(fact_row)
            now_counts = counters(fact, as_of)
            then_counts = counters(fact, fact_row["rolled_at"])
            if now_counts == then_counts:
                continue
            agg = out.setdefault(str(fact_row[fact_group] or "") if fact_group else "", Aggregates())
            for i in wanted:
                setattr(agg, COUNTERS[i], getattr(agg, COUNTERS[i]) + now_counts[i] - then_counts[i])
        # Keys whose facts all moved elsewhere keep a row of zeros; the facts would show no group.
        out = {k: v for k, v in out.items() if v.received}
        if group is None and not out:
            out[""] = Aggregates()
        return out

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
            days, pieces = _day_split(to_utc(start), to_utc(stop))
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
