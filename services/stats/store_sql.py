"""The warehouse's SQL, built without a session: the metric predicates (the SQL form of
``domain.counters``), slice conditions, the fixed statements of the ingest path and the names of the
rollup tables' columns. ``store`` and ``store_queries`` run them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Select,
    Table,
    and_,
    case,
    func,
    literal,
    or_,
    select,
    true,
)

from services.common.regions import Tier
from services.common.timeutil import to_utc
from services.stats.domain import (
    COUNTERS,
    NOT_OWED_STATES,
    NOTICE_COUNTERS,
    SATISFIED_RATINGS,
    CaseFact,
)
from services.stats.models import (
    DAY_COLUMNS,
    ROLLUP_KEY,
    CaseFactRow,
    daily_counts,
    region_rollups,
    rollup_days_over,
    rollups,
)
from services.stats.ports import Slice

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
        # 办事进度推送: the drill-down lists the cases with such notices; the sums add their number.
        "notices_sent": F.notices_sent > 0,
        "notices_failed": F.notices_failed > 0,
        "notices_off": F.notices_off.is_(True),
    }


def counter_terms(as_of: datetime | ColumnElement[Any]) -> dict[str, ColumnElement[int]]:
    """What one fact adds to each counter's sum as of a moment (or a column): 1 when it meets the
    counter's predicate, its number of notices for ``NOTICE_COUNTERS`` (``domain.counters`` likewise)."""
    preds = predicates(as_of)
    return {name: getattr(F, name) if name in NOTICE_COUNTERS else case((preds[name], 1), else_=0) for name in COUNTERS}


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


def group_column(where: Slice, group_by: str | None) -> Any:
    if group_by is None:
        return None
    if group_by == "child":
        return CHILD_COLUMN[where.tier]
    columns = {"unit": F.unit_id, "category": F.category, "channel": F.channel, "region": F.region_code}
    return columns[group_by]


def day_split(start: datetime, end: datetime) -> tuple[tuple[date, date] | None, list[tuple[datetime, datetime]]]:
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


def fact_values(fact: CaseFact) -> dict[str, Any]:
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
# Statements sent as one on PostgreSQL by SqlWarehouse.run (an event's fact and rollups: 3 to 6).
COMBINED_STATEMENTS = 8
DAILY_PATH = ("province_code", "city_code", "county_code")


def utc_now() -> datetime:
    return datetime.now(UTC)


def fact_of(row: Any) -> CaseFact:
    return CaseFact(**{name: row[name] for name in FACT_FIELDS})


def utc_day(value: datetime) -> date:
    return to_utc(value).date()


def rollup_select(where: ColumnElement[bool], *, plus: Any | None, minus: Any | None, days: int) -> Select[Any]:
    """Per rollup key, counters as of ``plus`` minus counters as of ``minus`` (either may be absent),
    and ``days`` times each fact's reply-day bucket (1 add, -1 subtract, 0 leave)."""
    plus_t = counter_terms(plus) if plus is not None else None
    minus_t = counter_terms(minus) if minus is not None else None
    sums: list[Any] = []
    for name in COUNTERS:
        term: Any = literal(0)
        if plus_t is not None:
            term = plus_t[name]
        if minus_t is not None:
            term = term - minus_t[name]
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


def ingest_sql(name: str, *, postgres: bool) -> str:
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
    if name == "save_text":
        return f'INSERT INTO case_texts (case_id, "text") VALUES ({mark}, {mark}) ON CONFLICT DO NOTHING'
    if name == "save_fact":
        updates = ", ".join(f"{c} = excluded.{c}" for c in FACT_ROW_COLUMNS if c != "case_id")
        marks = ", ".join([mark] * len(FACT_ROW_COLUMNS))
        return f"INSERT INTO case_facts ({columns}) VALUES ({marks}) ON CONFLICT (case_id) DO UPDATE SET {updates}"
    raise KeyError(name)


def sqlite_value(value: Any) -> Any:
    """A value as SQLAlchemy's SQLite types store it (UTC datetimes as text that sorts in time)."""
    if isinstance(value, datetime):
        # The same text as strftime("%Y-%m-%d %H:%M:%S.%f") for the years kept (1970-2199), at a
        # third of its cost (it ran for some ten columns of every fact saved).
        return to_utc(value).replace(tzinfo=None).isoformat(" ", "microseconds")
    return value
