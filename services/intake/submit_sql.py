"""The SQL of SubmitCase's lookups and writes: the SimHash bands, the one-statement lookup of both
databases, and on PostgreSQL the autocommit path (``PgSubmitPath``) that runs them on psycopg; and
the statements, built once, of the day's case counter, a case's save and its progress notices.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, cast

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import Table, bindparam, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url

from services.intake import dedup
from services.intake.models import (
    OPEN_CASE_SQL,
    CaseRow,
    CaseSequenceRow,
    ProgressNoticeRow,
    TimelineRow,
    outbox,
)

BAND_BITS = dedup.BITS // dedup.BANDS
BAND_MASK = (1 << BAND_BITS) - 1
# Plain Tables for the submit's Core inserts.
CASES = CaseRow.metadata.tables[CaseRow.__tablename__]
TIMELINE = TimelineRow.metadata.tables[TimelineRow.__tablename__]
# What following routing's handling (and an evaluation, a review) changes on a case, checked against
# the version it was read at: built once, since composing the statement on each event cost more than
# running it.
SAVED_COLUMNS = (
    "state", "version", "owner_node", "owner_epoch", "flags", "updated_at", "handling_version", "work_order_id",
    "unit_id", "reply_count", "replied_at", "reply_text", "handling_due", "merged_into", "evaluated_reply",
    "satisfaction", "review_reply",
)  # fmt: skip
SAVE_CASE = (
    update(CASES)
    .where(CASES.c.case_id == bindparam("b_case_id"), CASES.c.version == bindparam("b_expected_version"))
    .values({name: bindparam(name) for name in SAVED_COLUMNS})
)
# A case's progress notices (TrackCase, and whether the citizen was told of 受理 already) and the
# insert of a new one unless its id is there: built once (every followed 受理 runs both).
_NOTICES = cast(Table, ProgressNoticeRow.__table__)
NOTICES_OF = (
    select(_NOTICES)
    .where(_NOTICES.c.case_id == bindparam("case_id"))
    .order_by(_NOTICES.c.created_at, _NOTICES.c.notice_id)
)
_NOTICE_INSERTS: dict[str, Any] = {}


def notice_insert(dialect: str) -> Any:
    built = _NOTICE_INSERTS.get(dialect)
    if built is None:
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        # RETURNING says whether it inserted (psycopg's rowcount does not for ON CONFLICT DO NOTHING).
        conflict_free = insert(_NOTICES).on_conflict_do_nothing(index_elements=["notice_id"])
        built = _NOTICE_INSERTS[dialect] = conflict_free.returning(_NOTICES.c.notice_id)
    return built


_BUMPS: dict[str, Any] = {}


def bump_sql(dialect: str) -> Any:
    """The day's counter upsert of ``dialect`` with a bound day and step, built once: every SQLite
    submit runs it, and building it per call cost more than running it (issue 21)."""
    built = _BUMPS.get(dialect)
    if built is None:
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        counter = CaseSequenceRow.__table__.c
        built = _BUMPS[dialect] = (
            insert(CaseSequenceRow)
            .values(day=bindparam("day"), last=bindparam("by"))
            .on_conflict_do_update(index_elements=[counter.day], set_={"last": counter.last + bindparam("by")})
            .returning(counter.last)
        )
    return built


# Open cases, as written in the partial indexes (models.py), so that those serve the query.
OPEN = text(OPEN_CASE_SQL)


def signed64(value: int) -> int:
    # BIGINT is signed on both databases; the SimHash is an unsigned 64-bit value.
    return value - (1 << 64) if value >= 1 << 63 else value


def unsigned64(value: int) -> int:
    return value + (1 << 64) if value < 0 else value


def bands(value: int) -> list[int]:
    return [(value >> (band * BAND_BITS)) & BAND_MASK for band in range(dedup.BANDS)]


def probes(band_value: int) -> list[int]:
    return [band_value, *(band_value ^ (1 << bit) for bit in range(BAND_BITS))]


# Built once with expanding parameters: constructing 68-value IN clauses per submit cost more
# than running them.
NEAR_QUERY = (
    select(CaseRow.case_id, CaseRow.simhash)
    .where(
        or_(
            CaseRow.band0.in_(bindparam("b0", expanding=True)),
            CaseRow.band1.in_(bindparam("b1", expanding=True)),
            CaseRow.band2.in_(bindparam("b2", expanding=True)),
            CaseRow.band3.in_(bindparam("b3", expanding=True)),
        ),
        OPEN,
    )
    .limit(200)
)


def lookup_sql(*, postgres: bool, psycopg_style: bool = False) -> str:
    """Everything a submit reads before it writes, in one round trip (they were five).

    Each branch is an equality on the leading column of an index of its own (models.py): the
    idempotency key; the submitter's recent cases by phone and, apart, by ID number (the rate
    limit); the newest open case of each, the oldest open case with the same text, and open cases
    sharing a SimHash band (partial indexes over open cases). An absent phone or ID number is
    NULL, which equals nothing, and no ``since`` (no rate limit) is NULL too: the branch then
    finds nothing at the cost of one index probe. Nothing in a branch is an OR over two columns
    or a guard on a parameter: a prepared statement's generic plan, made before the values are
    known, once walked every case by date for such a branch, because almost every stored ID
    number is empty (issue 20).

    The ID-number rate branch leaves out cases the phone branch counted already. Every limited
    part sits in a subquery (SQLite allows no LIMIT inside a compound select). On PostgreSQL the
    band values are sent as text and probed with the 16 values one bit away (``probes``) worked
    out by the server, and of the band candidates only the nearest comes back (what
    ``submission._links`` would pick): shipping up to 200 rows to Python per submit cost more than
    the rest of the lookup.
    """

    def p(name: str) -> str:
        return f"%({name})s" if psycopg_style else f":{name}"

    cases = CASES.name
    open_case = OPEN_CASE_SQL
    if postgres:
        bands = " OR ".join(
            f"band{n} = ANY(ARRAY[CAST({p(f'b{n}')} AS integer), "
            + ", ".join(f"CAST({p(f'b{n}')} AS integer) # {1 << bit}" for bit in range(BAND_BITS))
            + "])"
            for n in range(dedup.BANDS)
        )
        not_same_phone = f"phone_bidx IS DISTINCT FROM {p('pb')}"
        near = (
            f"SELECT case_id, simhash FROM (SELECT case_id, simhash FROM {cases} WHERE ({bands}) AND {open_case}"
            f" LIMIT 200) AS band_hits ORDER BY bit_count((simhash # {p('h')})::bit(64)), case_id LIMIT 1"
        )
    else:
        # One part per band: SQLite's OR optimisation plans each OR term without the rest of the
        # WHERE clause, so it could not use the partial indexes and scanned a whole one instead.
        # Each band's probes (``probes``: the value and the 16 one bit away) as parameters of their
        # own, not an expanding list: the statement is then the same text every submit, and
        # SQLAlchemy no longer rewrites it with 68 placeholders each time (issue 21).
        per_band = " UNION ALL ".join(
            f"SELECT case_id, simhash FROM {cases} WHERE band{n} IN "
            f"({', '.join(p(f'b{n}_{i}') for i in range(BAND_BITS + 1))}) AND {open_case}"
            for n in range(dedup.BANDS)
        )
        not_same_phone = f"phone_bidx IS NOT {p('pb')}"
        near = f"SELECT case_id, simhash FROM ({per_band}) AS band_hits LIMIT 200"

    def newest_open(column: str, name: str) -> str:
        return (
            f"SELECT case_id, submitted_at FROM (SELECT case_id, submitted_at FROM {cases}"
            f" WHERE {column} = {p(name)} AND {open_case}"
            f" ORDER BY submitted_at DESC, case_id DESC LIMIT 1) AS by_{name}"
        )

    return f"""
SELECT 'key' AS kind, case_id, CAST(0 AS BIGINT) AS num FROM {cases} WHERE idempotency_key = {p("key")}
UNION ALL
SELECT 'rate', NULL, count(*) FROM {cases} WHERE phone_bidx = {p("pb")} AND received_at >= {p("since")}
UNION ALL
SELECT 'rate', NULL, count(*) FROM {cases}
 WHERE id_number_bidx = {p("ib")} AND received_at >= {p("since")} AND {not_same_phone}
UNION ALL
SELECT 'dup', case_id, 0 FROM (SELECT case_id FROM {cases} WHERE fingerprint = {p("fp")} AND {open_case}
  ORDER BY submitted_at, case_id LIMIT 1) AS dup
UNION ALL
SELECT 'mine', case_id, 0 FROM ({newest_open("phone_bidx", "pb")} UNION ALL {newest_open("id_number_bidx", "ib")}
  ORDER BY submitted_at DESC, case_id DESC LIMIT 1) AS mine
UNION ALL
SELECT 'near', case_id, simhash FROM ({near}) AS near
"""


LOOKUP_QUERIES = {postgres: text(lookup_sql(postgres=postgres)) for postgres in (True, False)}


def probe_params(band_values: Sequence[int]) -> dict[str, int]:
    """The SQLite lookup's band parameters: each band's probes as ``b<band>_<i>``."""
    return {f"b{band}_{i}": probe for band, value in enumerate(band_values) for i, probe in enumerate(probes(value))}


def quoted(name: str) -> str:
    return f'"{name}"'


def sql_literal(value: Any) -> str:
    # Only for column defaults declared in models.py (constants), never for input.
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and "'" not in value:
        return f"'{value}'"
    raise ValueError(f"no SQL literal for default {value!r}")


def pg_write_sql(given: Sequence[str], *, with_event: bool) -> str:
    """The case, its first timeline row and (unless held) its event in one statement.

    ``given`` are the case columns sent as parameters; the others get their declared default as
    a literal (a new case has no work order, replies or rating yet). Fewer than 50 parameters
    keep the statement in psycopg's parse cache.

    ``ON CONFLICT (idempotency_key) DO NOTHING``: when a concurrent retry committed first, the
    insert (and, through ``new_case``, the other two) writes nothing, so an empty answer means
    "already registered". The outbox row takes no advisory lock (``outbox.append_event`` does):
    the case id is new, so no other transaction can be writing an event of this case.
    """
    names = set(given)
    columns = ", ".join(quoted(name) for name in (*given, *(n for n, _ in CASE_COLUMNS if n not in names)))
    values = ", ".join(["%s"] * len(given) + [sql_literal(d) for n, d in CASE_COLUMNS if n not in names])
    sql = (
        f"WITH new_case AS (INSERT INTO {CASES.name} ({columns}) VALUES ({values})"
        " ON CONFLICT (idempotency_key) DO NOTHING RETURNING case_id),"
        f" timeline AS (INSERT INTO {TIMELINE.name} (case_id, {quoted('at')}, state, summary)"
        " SELECT case_id, %s::timestamptz, %s, %s FROM new_case)"
    )
    if with_event:
        sql += (
            f", event AS (INSERT INTO {outbox.name} (event_id, source, event_type, case_id, body, created_at)"
            " SELECT %s, %s, %s, case_id, %s::bytea, %s::timestamptz FROM new_case)"
        )
    return sql + " SELECT case_id FROM new_case"


def column_default(column: Any) -> Any:
    # The Core insert fills Python-side column defaults; the hand-written one must send them.
    default = column.default
    return default.arg if default is not None and default.is_scalar else None


CASE_COLUMNS: tuple[tuple[str, Any], ...] = tuple((c.name, column_default(c)) for c in CASES.columns)


class PgSubmitPath:
    """SubmitCase's statements on PostgreSQL: a lookup and one write, on an autocommit connection.

    The submit used to run BEGIN, the lookup, three inserts, an advisory lock and COMMIT through
    the ORM session (eight round trips, about two thirds of its CPU). Under READ COMMITTED every
    statement sees a fresh snapshot anyway and the lookup takes no locks, so running the lookup on
    its own and the writes as one statement (which commits itself) decides exactly as the
    transaction did. The SQL is plain text on the psycopg connection (prepared after a few uses):
    SQLAlchemy's per-statement work cost more than the statements.

    Its connections are its own (made on first use from ``url``), kept in a small stack: always in
    autocommit, without the service pool's ping on every checkout (one more round trip per submit)
    and without SQLAlchemy's pool (its checkout and return cost about 130 µs of CPU per submit,
    against about 20 here). A connection the server dropped while idle fails on the lookup, the
    submit's first statement and a read; then the idle ones are closed too (after a restart they
    are all dead) and the lookup runs again on a fresh connection.
    """

    MAX_IDLE = 10

    def __init__(self, url: str, *, service: str = "intake") -> None:
        # psycopg takes the URL without SQLAlchemy's driver name; the schema is the service's (make_engine).
        self._conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._schema = service
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self.lookup_sql = lookup_sql(postgres=True, psycopg_style=True)
        self.get_sql = f"SELECT * FROM {CASES.name} WHERE case_id = %s"
        sequence = CaseSequenceRow.__tablename__
        self.bump_sql = (
            f'INSERT INTO {sequence} (day, "last") VALUES (%s, %s)'
            f' ON CONFLICT (day) DO UPDATE SET "last" = {sequence}."last" + EXCLUDED."last" RETURNING "last"'
        )
        self._write_sql: dict[tuple[tuple[str, ...], bool], str] = {}

    def write_sql(self, given: tuple[str, ...], *, with_event: bool) -> str:
        found = self._write_sql.get((given, with_event))
        if found is None:
            found = self._write_sql[(given, with_event)] = pg_write_sql(given, with_event=with_event)
        return found

    def _new_connection(self) -> psycopg.Connection[Any]:
        raw = psycopg.connect(self._conninfo, autocommit=True)
        try:
            raw.execute(f'SET search_path TO "{self._schema}"')
            index_only_planning(raw)
        except BaseException:
            raw.close()
            raise
        return raw

    def connect(self) -> PgConnection:
        with self._lock:
            raw = self._idle.pop() if self._idle else None
        return PgConnection(self, raw if raw is not None else self._new_connection())

    def give_back(self, raw: psycopg.Connection[Any]) -> None:
        """Keep ``raw`` for the next submit unless it is broken, inside a transaction, or one too many."""
        if not (raw.broken or raw.closed) and raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            with self._lock:
                if len(self._idle) < self.MAX_IDLE:
                    self._idle.append(raw)
                    return
        raw.close()

    def _close_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for raw in idle:
            raw.close()

    def reconnect(self, dropped: PgConnection) -> PgConnection:
        """A fresh connection after ``dropped`` was found closed by the server; the idle ones go too."""
        dropped.release()
        self._close_idle()
        return self.connect()

    def close(self) -> None:
        self._close_idle()


def index_only_planning(raw: psycopg.Connection[Any]) -> None:
    # Every statement of a submit is an index lookup and must stay one as the table grows. When many
    # open cases share SimHash bands (one text posted by many people, or a benchmark), the planner
    # chose a sequential scan of all cases for the band query: 12 ms a submit at 3,000 cases and
    # growing with the table, against under 1 ms with the band indexes. Only the submit's connections.
    #
    # And generic plans: PostgreSQL may keep re-planning the prepared lookup (a custom plan per
    # execution when its estimates favour them); on one connection the lookup took 1.10 ms with
    # custom plans and 0.53 ms with the generic one. With sequential scans off, the generic plan is
    # the same index plan, made once per connection.
    raw.execute("SET enable_seqscan = off")
    raw.execute("SET plan_cache_mode = force_generic_plan")


class PgConnection:
    """One of ``PgSubmitPath``'s psycopg connections (autocommit), lent to one submit."""

    def __init__(self, path: PgSubmitPath, raw: psycopg.Connection[Any]) -> None:
        self._path = path
        self.raw = raw

    @property
    def broken(self) -> bool:
        return bool(self.raw.broken or self.raw.closed)

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> list[Any]:
        with self.raw.cursor() as cursor:
            cursor.execute(sql, params, prepare=True)
            return cursor.fetchall()

    def fetch_row(self, sql: str, params: Sequence[Any]) -> Any:
        with self.raw.cursor(row_factory=namedtuple_row) as cursor:
            cursor.execute(sql, params, prepare=True)
            return cursor.fetchone()

    def release(self) -> None:
        self._path.give_back(self.raw)
