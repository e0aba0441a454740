"""The warehouse's SQLAlchemy adapter: event keeping, fact upserts, the derived tables, the metric
predicates in SQL.

``store_sql.predicates(as_of)`` is the SQL form of the definitions in ``services.stats.domain.DEFINITIONS``
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
table; a batch of events in one transaction (``PendingFacts``) sums its events' differences and
writes them once before it commits. A fact's counters as of a later moment differ from those as
of ``rolled_at`` only once one of its deadlines passes; ``next_window_at`` is the first such
deadline. A whole-month query as of ``as_of`` reads the rollups and corrects them with the facts
whose ``next_window_at < as_of`` or ``rolled_at > as_of`` (both indexed; the ``stats-rollup``
timer keeps the first set small by rolling those facts forward).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    Date,
    bindparam,
    cast,
    func,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.common.timeutil import to_utc
from services.stats.domain import (
    COUNTERS,
    CaseEvent,
    CaseFact,
    counters,
    next_window,
)
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
)
from services.stats.store_queries import WarehouseQueries
from services.stats.store_sql import (
    COMBINED_STATEMENTS,
    DAILY_PATH,
    DC,
    FACT_COLUMNS,
    FACT_KEY,
    FACT_ROW_COLUMNS,
    FACT_TABLE,
    N_COUNTERS,
    RD,
    RR,
    UPSERT_VALUES_ROWS,
    F,
    R,
    fact_of,
    fact_values,
    region_rollup_keys,
    rollup_select,
    sqlite_value,
    utc_day,
)
from services.stats.translate import case_events_of

# Upsert SQL by (dialect, table, keys, columns, rows); see SqlWarehouse._upsert_sql.
_UPSERT_SQL: dict[tuple[str, str, tuple[str, ...], tuple[str, ...], int], str] = {}


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
            day_key = (utc_day(fact.submitted_at), fact.region_code, fact.category)
            entry = self.daily.setdefault(day_key, [0, fact.province_code, fact.city_code, fact.county_code])
            entry[0] += sign

    def _add_counters(self, fact: CaseFact, as_of: datetime, sign: int, *, days: bool) -> None:
        key = tuple(getattr(fact, name) for name in ROLLUP_KEY)
        values = self.main.get(key)
        if values is None:
            values = self.main[key] = [0] * len(ROLLUP_VALUES)
        for i, hit in enumerate(counters(fact, as_of)):
            if hit:
                values[i] += sign * hit  # hit: 1, or a case's number of notices (NOTICE_COUNTERS)
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


class PendingFacts:
    """What one transaction's events saved and is not yet written: facts with the rollups' changes
    they add up to, and case texts (``SqlWarehouse(pending=...)``; ``write_pending`` before the
    commit); and each case's kept events, read and parsed once. A batch of events then costs one
    fact statement and one upsert per derived table instead of those per event; the figures are the
    same, since the changes are sums and a case saved twice gives back what its first save added
    before adding its last."""

    def __init__(self) -> None:
        self.facts: dict[str, tuple[CaseFact, datetime]] = {}  # case id -> (fact, rolled_at)
        self.delta = RollupDelta()
        self.events: dict[str, list[CaseEvent]] = {}  # case id -> its kept events, read once
        self.texts: dict[str, str] = {}  # case id -> its text, kept if none is yet


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


class SqlWarehouse(WarehouseQueries):
    """The stats unit of work on SQLite and PostgreSQL: the reads of ``WarehouseQueries`` and the
    writes: events kept, facts upserted with their rollups, rollups rolled forward and rebuilt.
    With ``pending``, facts and their rollups wait in it until ``write_pending`` (a batch of events)."""

    def __init__(
        self, session: Session, *, clock: Callable[[], datetime] | None = None, pending: PendingFacts | None = None
    ) -> None:
        super().__init__(session, clock=clock)
        self.pending = pending

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
            fact = fact_of(row)
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
        query = rollup_select(rolled, plus=F.rolled_at, minus=None, days=1)
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

    def record_event(self, events: Sequence[CaseEvent], *, source: str, body: bytes) -> bool:
        """Keep the body of ``events``; False when (case_id, version, kind) was already there (the
        envelope's: the first event's case and kind, the last one's version; see the port).

        On PostgreSQL the same statement first takes a per-case transaction lock: events of one
        case are folded one at a time, and the one waiting sees this one's event once it goes on
        (SQLite writers are serialised by BEGIN IMMEDIATE anyway)."""
        event = events[0]
        params: tuple[Any, ...] = (event.case_id, events[-1].version, event.kind, source, body)
        if self.dialect == "postgresql":
            params = (event.case_id, *params)
        cursor = self.cursor()
        cursor.execute(self._sql("record_event"), params)
        if cursor.fetchone() is None:
            return False
        known = self.pending.events.get(event.case_id) if self.pending is not None else None
        if known is not None:
            known.extend(events)
        return True

    def events_of(self, case_id: str) -> list[CaseEvent]:
        """The case's kept events; with ``pending`` read and parsed once per transaction (the case's
        events are then this transaction's to add: on PostgreSQL ``record_event`` holds its lock)."""
        known = self.pending.events.get(case_id) if self.pending is not None else None
        if known is not None:
            return list(known)
        out: list[CaseEvent] = []
        cursor = self.cursor()
        cursor.execute(self._sql("events_of"), (case_id,))
        for (body,) in cursor.fetchall():
            out += case_events_of(bytes(body))
        if self.pending is not None:
            self.pending.events[case_id] = list(out)
        return out

    def save_fact(self, fact: CaseFact) -> None:
        """Upsert the fact and move its contribution to the derived tables in the same transaction:
        the old row's counters as of its rolled_at out, the new ones as of now in. With ``pending``
        both wait in it for ``write_pending``."""
        now = to_utc(self.clock())
        pending = self.pending
        delta = RollupDelta() if pending is None else pending.delta
        earlier = pending.facts.get(fact.case_id) if pending is not None else None
        if earlier is not None:
            delta.add(earlier[0], earlier[1], -1)  # this transaction's own row, not yet written
        else:
            # FOR UPDATE: the stats-rollup timer must not roll this row between this read and the upsert.
            cursor = self.cursor()
            cursor.execute(self._sql("fact_row"), (fact.case_id,))
            old = cursor.fetchone()
            if old is not None:
                row = self._fact_row(old)
                delta.add(fact_of(row), row["rolled_at"], -1)
        delta.add(fact, now, 1)
        if pending is not None:
            pending.facts[fact.case_id] = (fact, now)
            return
        delta.apply(self, first=(self._sql("save_fact"), self._fact_params(fact, now)))

    def _fact_params(self, fact: CaseFact, rolled_at: datetime) -> tuple[Any, ...]:
        values = fact_values(fact)
        values["rolled_at"] = rolled_at
        values["next_window_at"] = next_window(rolled_at, [fact.accept_due, fact.handling_due, fact.rating_default_at])
        params = [values[name] for name in FACT_ROW_COLUMNS]
        if self.dialect != "postgresql":
            params = [sqlite_value(v) for v in params]
        return tuple(params)

    def write_pending(self, pending: PendingFacts) -> None:
        """Write what ``pending`` gathered: each case's last fact in one executemany (in case id
        order, the order two transactions then lock them in), the rollups' changes summed over all
        of them in one statement per table."""
        if pending.texts:
            self.cursor().executemany(self._sql("save_text"), sorted(pending.texts.items()))
        if not pending.facts:
            return
        rows = [self._fact_params(fact, at) for _, (fact, at) in sorted(pending.facts.items())]
        self.cursor().executemany(self._sql("save_fact"), rows)
        pending.delta.apply(self)

    def save_text(self, case_id: str, text: str) -> None:
        if self.pending is not None:
            self.pending.texts.setdefault(case_id, text)
            return
        stmt = self.insert(CaseTextRow.__table__).values(case_id=case_id, text=text).on_conflict_do_nothing()
        self.session.execute(stmt)

    def fact(self, case_id: str) -> CaseFactRow | None:
        return self.session.get(CaseFactRow, case_id)
