"""Intake's SQLAlchemy adapter: the unit of work behind ``handlers.IntakeUnitOfWork``."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import date, datetime
from types import TracebackType
from typing import Any, Protocol

import psycopg
from google.protobuf.message import Message
from lianxin.events.v1 import events_pb2
from psycopg.rows import namedtuple_row
from sqlalchemy import bindparam, or_, select, text, tuple_, union_all, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.common.db import COUNT_LIMIT, bounded_count
from services.common.errors import AlreadyExists, Conflict
from services.common.events import envelope, to_bus_event, write_event
from services.common.outbox import append_event
from services.common.service import BusEvent, utc_now
from services.common.timeutil import to_utc
from services.intake import dedup, mapping
from services.intake.domain import (
    Case,
    CaseEvaluated,
    CaseRegistered,
    CaseState,
    CaseWithdrawn,
    CommandForOwner,
    Complainant,
    DomainEvent,
    ReviewRequested,
    TimelineEntry,
)
from services.intake.handlers import CaseFilter, SubmitLookup
from services.intake.models import (
    OPEN_CASE_SQL,
    PUBLISHED_TERMS,
    CaseRow,
    CaseSequenceRow,
    EvaluationRow,
    ProgressNoticeRow,
    TimelineRow,
    outbox,
)
from services.intake.notices import Notice, NoticeStatus

# Plain Tables for the submit's Core inserts.
_CASES = CaseRow.metadata.tables[CaseRow.__tablename__]
_TIMELINE = TimelineRow.metadata.tables[TimelineRow.__tablename__]
_PERSONAL = ("name", "id_number", "phone", "address", "title", "body")
# Open cases, as written in the partial indexes (models.py), so that those serve the query.
_OPEN = text(OPEN_CASE_SQL)
_BAND_BITS = dedup.BITS // dedup.BANDS
_BAND_MASK = (1 << _BAND_BITS) - 1


def _signed64(value: int) -> int:
    # BIGINT is signed on both databases; the SimHash is an unsigned 64-bit value.
    return value - (1 << 64) if value >= 1 << 63 else value


def _unsigned64(value: int) -> int:
    return value + (1 << 64) if value < 0 else value


def _bands(value: int) -> list[int]:
    return [(value >> (band * _BAND_BITS)) & _BAND_MASK for band in range(dedup.BANDS)]


def _probes(band_value: int) -> list[int]:
    return [band_value, *(band_value ^ (1 << bit) for bit in range(_BAND_BITS))]


# Built once with expanding parameters: constructing 68-value IN clauses per submit cost more
# than running them.
_NEAR_QUERY = (
    select(CaseRow.case_id, CaseRow.simhash)
    .where(
        or_(
            CaseRow.band0.in_(bindparam("b0", expanding=True)),
            CaseRow.band1.in_(bindparam("b1", expanding=True)),
            CaseRow.band2.in_(bindparam("b2", expanding=True)),
            CaseRow.band3.in_(bindparam("b3", expanding=True)),
        ),
        _OPEN,
    )
    .limit(200)
)


def _lookup_sql(*, postgres: bool, psycopg_style: bool = False) -> str:
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
    band values are sent as text and probed with the 16 values one bit away (``_probes``) worked
    out by the server, and of the band candidates only the nearest comes back (what
    ``submission._links`` would pick): shipping up to 200 rows to Python per submit cost more than
    the rest of the lookup.
    """

    def p(name: str) -> str:
        return f"%({name})s" if psycopg_style else f":{name}"

    cases = _CASES.name
    open_case = OPEN_CASE_SQL
    if postgres:
        bands = " OR ".join(
            f"band{n} = ANY(ARRAY[CAST({p(f'b{n}')} AS integer), "
            + ", ".join(f"CAST({p(f'b{n}')} AS integer) # {1 << bit}" for bit in range(_BAND_BITS))
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
        per_band = " UNION ALL ".join(
            f"SELECT case_id, simhash FROM {cases} WHERE band{n} IN {p(f'b{n}')} AND {open_case}"  # expanding
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


_LOOKUP_QUERIES = {
    postgres: text(_lookup_sql(postgres=postgres)).bindparams(
        *(bindparam(f"b{n}", expanding=not postgres) for n in range(dedup.BANDS))
    )
    for postgres in (True, False)
}


class Sealer(Protocol):
    """The part of ``services.common.crypto``'s field ciphers that intake uses."""

    def encrypt(self, plaintext: str, *, context: str) -> bytes: ...

    def decrypt(self, blob: bytes, *, context: str) -> str: ...

    def blind_index(self, kind: str, value: str) -> str: ...


class CaseNumbers:
    """Case numbers handed out in blocks on PostgreSQL, one short transaction per block.

    The per-day counter row would otherwise be locked from a submit's number to its commit, so
    every submit would wait for the previous one's commit (fsync). With blocks, numbers stay
    unique and, within a process, increasing; a crash or a rolled-back submit leaves a gap, and
    two api replicas interleave their blocks (case ids stay unique and roughly time-ordered).
    SQLite serialises writers anyway (BEGIN IMMEDIATE) and a second connection could not write
    while the submit holds the lock, so there the number comes from inside the submit.
    """

    BLOCK = 32

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._ranges: dict[date, tuple[int, int]] = {}  # day → (next, last)

    def next(self, day: date, bump: Callable[[date, int], int] | None = None) -> int:
        """The next number of ``day``; ``bump(day, by)`` fetches a block in a statement of its own."""
        with self._lock:
            start, last = self._ranges.get(day, (1, 0))
            if start > last:
                if bump is not None:
                    last = bump(day, self.BLOCK)
                else:
                    with self._factory() as session, session.begin():
                        last = _bump(session, day, self.BLOCK)
                start = last - self.BLOCK + 1
            self._ranges = {day: (start + 1, last)}  # only today's block is worth keeping
            return start


def _bump(session: Session, day: date, by: int) -> int:
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    upsert = (
        insert(CaseSequenceRow)
        .values(day=day, last=by)
        .on_conflict_do_update(index_elements=[CaseSequenceRow.day], set_={"last": CaseSequenceRow.last + by})
        .returning(CaseSequenceRow.last)
    )
    return int(session.execute(upsert).scalar_one())


def _quoted(name: str) -> str:
    return f'"{name}"'


def _sql_literal(value: Any) -> str:
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


def _pg_write_sql(given: Sequence[str], *, with_event: bool) -> str:
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
    columns = ", ".join(_quoted(name) for name in (*given, *(n for n, _ in _CASE_COLUMNS if n not in names)))
    values = ", ".join(["%s"] * len(given) + [_sql_literal(d) for n, d in _CASE_COLUMNS if n not in names])
    sql = (
        f"WITH new_case AS (INSERT INTO {_CASES.name} ({columns}) VALUES ({values})"
        " ON CONFLICT (idempotency_key) DO NOTHING RETURNING case_id),"
        f" timeline AS (INSERT INTO {_TIMELINE.name} (case_id, {_quoted('at')}, state, summary)"
        " SELECT case_id, %s::timestamptz, %s, %s FROM new_case)"
    )
    if with_event:
        sql += (
            f", event AS (INSERT INTO {outbox.name} (event_id, source, event_type, case_id, body, created_at)"
            " SELECT %s, %s, %s, case_id, %s::bytea, %s::timestamptz FROM new_case)"
        )
    return sql + " SELECT case_id FROM new_case"


def _column_default(column: Any) -> Any:
    # The Core insert fills Python-side column defaults; the hand-written one must send them.
    default = column.default
    return default.arg if default is not None and default.is_scalar else None


_CASE_COLUMNS: tuple[tuple[str, Any], ...] = tuple((c.name, _column_default(c)) for c in _CASES.columns)


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
        self.lookup_sql = _lookup_sql(postgres=True, psycopg_style=True)
        self.get_sql = f"SELECT * FROM {_CASES.name} WHERE case_id = %s"
        sequence = CaseSequenceRow.__tablename__
        self.bump_sql = (
            f'INSERT INTO {sequence} (day, "last") VALUES (%s, %s)'
            f' ON CONFLICT (day) DO UPDATE SET "last" = {sequence}."last" + EXCLUDED."last" RETURNING "last"'
        )
        self._write_sql: dict[tuple[tuple[str, ...], bool], str] = {}

    def write_sql(self, given: tuple[str, ...], *, with_event: bool) -> str:
        found = self._write_sql.get((given, with_event))
        if found is None:
            found = self._write_sql[(given, with_event)] = _pg_write_sql(given, with_event=with_event)
        return found

    def _new_connection(self) -> psycopg.Connection[Any]:
        raw = psycopg.connect(self._conninfo, autocommit=True)
        try:
            raw.execute(f'SET search_path TO "{self._schema}"')
            _index_only_planning(raw)
        except BaseException:
            raw.close()
            raise
        return raw

    def connect(self) -> _PgConnection:
        with self._lock:
            raw = self._idle.pop() if self._idle else None
        return _PgConnection(self, raw if raw is not None else self._new_connection())

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

    def reconnect(self, dropped: _PgConnection) -> _PgConnection:
        """A fresh connection after ``dropped`` was found closed by the server; the idle ones go too."""
        dropped.release()
        self._close_idle()
        return self.connect()

    def close(self) -> None:
        self._close_idle()


def _index_only_planning(raw: psycopg.Connection[Any]) -> None:
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


class _PgConnection:
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


class SqlIntakeUnitOfWork:
    """One transaction. Personal fields are sealed on the way in and opened on the way out.

    With ``session`` it joins a transaction somebody else opened (an idempotent event consumer);
    then ``commit`` is left to that owner. With ``submit_path`` (PostgreSQL) a submit's lookup
    and writes bypass the session (``PgSubmitPath``); the session opens only when something else
    is asked for.
    """

    def __init__(
        self,
        factory: sessionmaker[Session] | None,
        cipher: Sealer,
        node: str,
        *,
        session: Session | None = None,
        numbers: CaseNumbers | None = None,
        submit_path: PgSubmitPath | None = None,
    ) -> None:
        self._numbers = numbers
        self._factory = factory
        self._cipher = cipher
        self._node = node
        self._borrowed = session is not None
        self._session = session
        self._submit_path = None if self._borrowed else submit_path
        self._pg: _PgConnection | None = None
        self._blind: dict[tuple[str, str], str] = {}

    @property
    def session(self) -> Session:
        if self._session is None:
            assert self._factory is not None
            self._session = self._factory()
            self._session.begin()
        return self._session

    def _pg_connection(self) -> _PgConnection:
        assert self._submit_path is not None
        if self._pg is None:
            self._pg = self._submit_path.connect()
        return self._pg

    def __enter__(self) -> SqlIntakeUnitOfWork:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._pg is not None:
            self._pg.release()
            self._pg = None
        if self._borrowed or self._session is None:
            return
        if self._session.in_transaction():
            self._session.rollback()
        self._session.close()

    def commit(self) -> None:
        if self._borrowed:
            self.session.flush()
            return
        if self._session is None:
            return  # nothing went through the session (a PostgreSQL submit commits its own statement)
        try:
            self._session.commit()
        except IntegrityError as error:
            self._session.rollback()
            raise AlreadyExists("case", "idempotency key") from error

    def _blind_index(self, kind: str, value: str) -> str:
        # A submit needs each one twice (lookup and insert); HMAC-SM3 is worth not repeating.
        key = (kind, value)
        found = self._blind.get(key)
        if found is None:
            found = self._blind[key] = self._cipher.blind_index(kind, value)
        return found

    # -- reads ---------------------------------------------------------------------------------

    def find_by_idempotency_key(self, key: str) -> Case | None:
        row = self.session.scalar(select(CaseRow).where(CaseRow.idempotency_key == key))
        return self._to_case(row) if row else None

    def get(self, case_id: str) -> Case | None:
        if self._pg is not None:
            found = self._pg.fetch_row(self._pg_sql().get_sql, (case_id,))
            return self._to_case(found) if found else None
        row = self.session.get(CaseRow, case_id)
        return self._to_case(row) if row else None

    def _pg_sql(self) -> PgSubmitPath:
        assert self._submit_path is not None
        return self._submit_path

    def get_by_tracking_code(self, code: str) -> tuple[Case, str] | None:
        row = self.session.scalar(select(CaseRow).where(CaseRow.tracking_code == code))
        return (self._to_case(row), row.phone_last4) if row else None

    def timeline(self, case_id: str) -> list[TimelineEntry]:
        rows = self.session.scalars(
            select(TimelineRow).where(TimelineRow.case_id == case_id).order_by(TimelineRow.at, TimelineRow.id)
        ).all()
        return [TimelineEntry(r.case_id, to_utc(r.at), CaseState(r.state), r.summary) for r in rows]

    def add_notice(self, notice: Notice) -> bool:
        """Queue a progress notice (办事进度推送); False when one with its id exists (a redelivery)."""
        if self.session.get(ProgressNoticeRow, notice.notice_id) is not None:
            return False
        self.session.add(
            ProgressNoticeRow(
                notice_id=notice.notice_id,
                case_id=notice.case_id,
                kind=notice.kind,
                channel=notice.channel,
                text=notice.text,
                created_at=notice.created_at,
                state="pending",
                attempts=0,
                next_attempt_at=notice.created_at,
                last_error="",
            )
        )
        return True

    def notices(self, case_id: str) -> list[NoticeStatus]:
        """The case's progress notices, oldest first (TrackCase shows them)."""
        rows = self.session.scalars(
            select(ProgressNoticeRow)
            .where(ProgressNoticeRow.case_id == case_id)
            .order_by(ProgressNoticeRow.created_at, ProgressNoticeRow.notice_id)
        ).all()
        return [
            NoticeStatus(
                kind=r.kind,
                channel=r.channel,
                text=r.text,
                state=r.state,
                created_at=to_utc(r.created_at),
                sent_at=to_utc(r.sent_at) if r.sent_at is not None else None,
            )
            for r in rows
        ]

    def _person(self, *, phone: str, id_number: str) -> Any:
        bidx = self._cipher.blind_index
        clauses = []
        if phone:
            clauses.append(CaseRow.phone_bidx == bidx("phone", phone))
        if id_number:
            clauses.append(CaseRow.id_number_bidx == bidx("id_number", id_number))
        return or_(*clauses)

    def submit_lookup(
        self,
        *,
        idempotency_key: str | None,
        phone: str,
        id_number: str,
        since: datetime | None,
        fingerprint: str,
        simhash: int,
    ) -> SubmitLookup:
        bidx = self._blind_index
        # None where a branch has nothing to look for: NULL equals nothing (see _lookup_sql).
        params: dict[str, Any] = {
            "key": idempotency_key,
            "since": since if since is not None and (phone or id_number) else None,
            "pb": bidx("phone", phone) if phone else None,
            "ib": bidx("id_number", id_number) if id_number else None,
            "fp": fingerprint,
        }
        bands = _bands(simhash)
        if self._submit_path is not None:
            params["h"] = _signed64(simhash)
            # Text, cast by the server: an int would be sent as int2 or int4 by its size, and each
            # combination would be a prepared statement of its own.
            params.update({f"b{band}": str(value) for band, value in enumerate(bands)})
            rows: Any = self._pg_lookup(self._submit_path, params)
        elif self._postgres():
            params.update({f"b{band}": value for band, value in enumerate(bands)})
            rows = self.session.execute(_LOOKUP_QUERIES[True], params)
        else:
            params.update({f"b{band}": _probes(value) for band, value in enumerate(bands)})
            rows = self.session.execute(_LOOKUP_QUERIES[False], params)
        found = SubmitLookup()
        for kind, case_id, num in rows:
            if kind == "key":
                found.existing = self.get(case_id)
            elif kind == "rate":
                found.recent += int(num or 0)  # by phone, and by ID number apart from those
            elif kind == "dup":
                found.duplicate = case_id
            elif kind == "mine":
                found.mine = case_id
            else:
                found.near.append((case_id, _unsigned64(num)))
        return found

    def _pg_lookup(self, path: PgSubmitPath, params: dict[str, Any]) -> list[Any]:
        conn = self._pg_connection()
        try:
            return conn.execute(path.lookup_sql, params)
        except psycopg.OperationalError:
            if not conn.broken:
                raise
            # Dropped by the server while idle in the pool (the submit pool does not ping): a read,
            # safe to run again on a fresh connection.
            self._pg = path.reconnect(conn)
            return self._pg.execute(path.lookup_sql, params)

    def _postgres(self) -> bool:
        return self.session.get_bind().dialect.name == "postgresql"

    def open_case_with_fingerprint(self, fingerprint: str) -> str | None:
        return self.session.scalar(
            select(CaseRow.case_id)
            .where(CaseRow.fingerprint == fingerprint, _OPEN)
            .order_by(CaseRow.submitted_at, CaseRow.case_id)
            .limit(1)
        )

    def open_cases_of_person(self, *, phone: str, id_number: str) -> list[str]:
        if not (phone or id_number):
            return []
        rows = self.session.scalars(
            select(CaseRow.case_id)
            .where(self._person(phone=phone, id_number=id_number), _OPEN)
            .order_by(CaseRow.submitted_at.desc(), CaseRow.case_id.desc())
            .limit(20)
        )
        return list(rows)

    def open_cases_near(self, simhash: int) -> list[tuple[str, int]]:
        # Banded multi-probe lookup (as dedup.NearDuplicateIndex, but in SQL so every api process
        # sees every case): any hash within 7 bits shares a band value within one bit.
        params = {f"b{band}": _probes(value) for band, value in enumerate(_bands(simhash))}
        rows = self.session.execute(_NEAR_QUERY, params).all()
        return [(row.case_id, _unsigned64(row.simhash)) for row in rows]

    def _filtered(self, query: Any, filters: CaseFilter) -> Any:
        if filters.states:
            query = query.where(CaseRow.state.in_([s.value for s in filters.states]))
        if filters.channel:
            query = query.where(CaseRow.channel == filters.channel)
        if filters.category:
            query = query.where(CaseRow.category == filters.category)
        if filters.regions is not None:
            query = query.where(CaseRow.region_code.in_(sorted(filters.regions)))
        if filters.submitted_after is not None:
            query = query.where(CaseRow.submitted_at >= filters.submitted_after)
        if filters.submitted_before is not None:
            query = query.where(CaseRow.submitted_at < filters.submitted_before)
        if filters.case_ids is not None:
            query = query.where(CaseRow.case_id.in_(sorted(filters.case_ids)))
        if filters.published_only:
            # As ix_cases_published's WHERE says it (literally), so that index serves the board.
            query = query.where(*(text(term) for term in PUBLISHED_TERMS))
        if filters.text:
            query = query.where(
                or_(
                    CaseRow.title.contains(filters.text, autoescape=True),
                    CaseRow.body.contains(filters.text, autoescape=True),
                    CaseRow.reply_text.contains(filters.text, autoescape=True),
                )
            )
        return query

    def _by_state(self, filters: CaseFilter) -> list[CaseFilter]:
        """The board's filter as one filter per published state (see ``list_cases``), else itself."""
        if filters.published_only and len(filters.states) > 1:
            return [replace(filters, states=frozenset({s})) for s in sorted(filters.states, key=lambda s: s.value)]
        return [filters]

    def _page(self, query: Any, filters: CaseFilter, after: tuple[datetime, str] | None, limit: int) -> Any:
        """Newest first after the token's (submitted_at, case_id), as one range of an index (row values)."""
        query = self._filtered(query, filters)
        if after is not None:
            query = query.where(tuple_(CaseRow.submitted_at, CaseRow.case_id) < tuple_(*after))
        return query.order_by(CaseRow.submitted_at.desc(), CaseRow.case_id.desc()).limit(limit)

    def list_cases(self, filters: CaseFilter, *, after: tuple[datetime, str] | None, limit: int) -> list[Case]:
        parts = self._by_state(filters)
        if len(parts) == 1:
            rows = self.session.scalars(self._page(select(CaseRow), filters, after, limit)).all()
            return [self._to_case(row) for row in rows]
        # The board: one ordered range of ix_cases_published per state, each at most a page, merged.
        # With both states in one IN, SQLite (no statistics) took ix_cases_state and sorted every
        # replied case to find a page (issue 17).
        pages = [
            select(self._page(select(CaseRow.case_id, CaseRow.submitted_at), f, after, limit).subquery()) for f in parts
        ]
        merged = union_all(*pages).subquery()
        ids = list(
            self.session.scalars(
                select(merged.c.case_id).order_by(merged.c.submitted_at.desc(), merged.c.case_id.desc()).limit(limit)
            )
        )
        found = {row.case_id: row for row in self.session.scalars(select(CaseRow).where(CaseRow.case_id.in_(ids)))}
        return [self._to_case(found[case_id]) for case_id in ids]

    def count_cases(self, filters: CaseFilter) -> int:
        counts = [
            bounded_count(self.session, self._page(select(CaseRow.case_id), f, None, COUNT_LIMIT + 1))
            for f in self._by_state(filters)
        ]
        return -1 if -1 in counts or sum(counts) > COUNT_LIMIT else sum(counts)

    def moderation_queue(self, *, regions: frozenset[str] | None, after: str | None, limit: int) -> list[Case]:
        query = select(CaseRow).where(CaseRow.state == CaseState.MODERATION.value)
        if regions is not None:
            query = query.where(CaseRow.region_code.in_(sorted(regions)))
        if after is not None:
            query = query.where(CaseRow.case_id > after)
        rows = self.session.scalars(query.order_by(CaseRow.case_id).limit(limit)).all()
        return [self._to_case(row) for row in rows]

    # -- writes --------------------------------------------------------------------------------

    def next_case_number(self, day: object) -> int:
        assert isinstance(day, date)
        if self._numbers is not None and self._submit_path is not None:
            return self._numbers.next(day, bump=self._pg_bump)
        if self._numbers is not None and self._postgres():
            return self._numbers.next(day)
        # Inside the submit: BEGIN IMMEDIATE (SQLite) or the row lock keeps numbers unique.
        return _bump(self.session, day, 1)

    def _case_values(self, case: Case, received_at: datetime) -> dict[str, Any]:
        bidx = self._blind_index
        person = case.complainant
        bands = _bands(case.simhash)
        values: dict[str, Any] = dict(
            case_id=case.case_id,
            tracking_code=case.tracking_code,
            idempotency_key=case.idempotency_key,
            channel=case.channel,
            channel_ref=case.channel_ref,
            title=case.title,
            body=case.body,
            category=case.category,
            category_auto=case.category_auto,
            region_code=case.region_code,
            place_unresolved=case.place_unresolved,
            registering_node=case.registering_node,
            owner_node=case.owner_node,
            owner_epoch=case.owner_epoch,
            state=case.state.value,
            version=case.version,
            anonymous=case.anonymous,
            repeat_of=case.repeat_of,
            duplicate_of=case.duplicate_of,
            flags=",".join(case.flags),
            hotline_operator_id=case.hotline_operator_id,
            id_number_bidx=bidx("id_number", person.id_number) if person.id_number else "",
            phone_bidx=bidx("phone", person.phone) if person.phone else "",
            phone_last4=person.phone[-4:] if person.phone else "",
            submitted_at=case.submitted_at,
            updated_at=case.updated_at,
            received_at=received_at,
            fingerprint=case.fingerprint,
            simhash=_signed64(case.simhash),
            band0=bands[0],
            band1=bands[1],
            band2=bands[2],
            band3=bands[3],
            moderation_reasons=",".join(case.moderation_reasons),
            place_address=case.place,
        )
        for field in _PERSONAL:
            value = getattr(person, field)
            values[f"{field}_sealed"] = self._cipher.encrypt(value, context=f"cases.{field}") if value else None
        return values

    def _pg_bump(self, day: date, by: int) -> int:
        # On the submit's connection, in autocommit: committed at once, like CaseNumbers' own transaction.
        assert self._submit_path is not None
        return int(self._pg_connection().execute(self._submit_path.bump_sql, (day, by))[0][0])

    def add(self, case: Case, *, received_at: datetime) -> None:
        values = self._case_values(case, received_at)
        try:
            # Insert now: on PostgreSQL a concurrent retry with the same idempotency key waits here
            # for the first transaction and then fails on the unique index, which we translate.
            # A Core insert: the ORM's unit of work cost more CPU than the round trip.
            self.session.execute(_CASES.insert(), [values])
        except IntegrityError as error:
            self.session.rollback()
            raise AlreadyExists("case", "idempotency key") from error

    def register(
        self, case: Case, *, received_at: datetime, entry: TimelineEntry, event: CaseRegistered | None
    ) -> None:
        """A new case with its first timeline entry and, unless held, its ``CaseRegistered``.

        AlreadyExists when a concurrent submit registered the same idempotency key first. On
        PostgreSQL this is one statement that commits by itself (``PgSubmitPath``), so it must be
        the submit's last write.
        """
        if self._submit_path is None:
            self.add(case, received_at=received_at)
            self.add_timeline(entry)
            if event is not None:
                self.emit(event)
            return
        values = self._case_values(case, received_at)
        params: list[Any] = [*values.values(), entry.at, entry.state.value, entry.summary]
        if event is not None:
            bus = to_bus_event(self._envelope(event))
            params += [bus.event_id, bus.source, bus.event_type, bus.body, utc_now()]
        sql = self._submit_path.write_sql(tuple(values), with_event=event is not None)
        try:
            written = self._pg_connection().execute(sql, params)
        except psycopg.IntegrityError as error:  # another unique key (tracking code): as the Core insert did
            raise AlreadyExists("case", "idempotency key") from error
        if not written:
            raise AlreadyExists("case", "idempotency key")

    def save(self, case: Case, *, expected_version: int) -> None:
        result = self.session.execute(
            update(CaseRow)
            .where(CaseRow.case_id == case.case_id, CaseRow.version == expected_version)
            .values(
                state=case.state.value,
                version=case.version,
                owner_node=case.owner_node,
                owner_epoch=case.owner_epoch,
                flags=",".join(case.flags),
                updated_at=case.updated_at,
                handling_version=case.handling_version,
                work_order_id=case.work_order_id,
                unit_id=case.unit_id,
                reply_count=case.reply_count,
                replied_at=case.replied_at,
                reply_text=case.reply_text,
                handling_due=case.handling_due,
                merged_into=case.merged_into,
                evaluated_reply=case.evaluated_reply,
                satisfaction=case.satisfaction,
                review_reply=case.review_reply,
            )
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 1) != 1:
            raise Conflict(f"case {case.case_id} changed since it was read")

    def add_timeline(self, entry: TimelineEntry) -> None:
        self.session.execute(
            _TIMELINE.insert(),
            [{"case_id": entry.case_id, "at": entry.at, "state": entry.state.value, "summary": entry.summary}],
        )

    def add_evaluation(
        self, *, evaluation_id: str, case_id: str, reply_number: int, satisfaction: str, comment: str, at: datetime
    ) -> None:
        self.session.add(
            EvaluationRow(
                evaluation_id=evaluation_id,
                case_id=case_id,
                reply_number=reply_number,
                satisfaction=satisfaction,
                comment=comment,
                at=at,
            )
        )
        try:
            self.session.flush()
        except IntegrityError as error:
            self.session.rollback()
            raise AlreadyExists("evaluation", evaluation_id) from error

    def emit(self, event: DomainEvent) -> None:
        self.session.flush()
        write_event(self.session, outbox, self._envelope(event))

    def send_command(self, command: CommandForOwner) -> None:
        """An ``events.v1.Command`` on intake's outbox (event type "command"): exchange takes it to the owner."""
        self.session.flush()
        message = mapping.owner_command(command)
        append_event(
            self.session,
            outbox,
            BusEvent(
                event_id=message.command_id, source="intake", event_type="command", body=message.SerializeToString()
            ),
            command.case_id,
        )

    def _envelope(self, event: DomainEvent) -> events_pb2.EventEnvelope:
        case = event.case
        payload: Message
        if isinstance(event, CaseRegistered):
            field, payload = "case_registered", mapping.case_registered(case)
        elif isinstance(event, CaseEvaluated):
            field, payload = "case_evaluated", mapping.case_evaluated(event)
        elif isinstance(event, ReviewRequested):
            field, payload = "review_requested", mapping.review_requested(event)
        else:
            assert isinstance(event, CaseWithdrawn)
            field, payload = "case_withdrawn", mapping.case_withdrawn(event)
        return envelope(
            payload_field=field,
            payload=payload,
            case_id=case.case_id,
            version=case.version,
            owner_node=case.owner_node,
            owner_epoch=case.owner_epoch,
            origin_node=self._node,
            origin_service="intake",
            occurred_at=case.updated_at,
        )

    def _to_case(self, row: CaseRow) -> Case:
        opened = {
            field: self._cipher.decrypt(blob, context=f"cases.{field}")
            if (blob := getattr(row, f"{field}_sealed"))
            else ""
            for field in _PERSONAL
        }
        return Case(
            case_id=row.case_id,
            tracking_code=row.tracking_code,
            channel=row.channel,
            channel_ref=row.channel_ref,
            title=row.title,
            body=row.body,
            category=row.category,
            region_code=row.region_code,
            registering_node=row.registering_node,
            owner_node=row.owner_node,
            state=CaseState(row.state),
            submitted_at=to_utc(row.submitted_at),
            updated_at=to_utc(row.updated_at),
            complainant=Complainant(**opened),
            place=row.place_address or "",
            owner_epoch=row.owner_epoch,
            version=row.version,
            category_auto=row.category_auto,
            place_unresolved=row.place_unresolved,
            anonymous=row.anonymous,
            repeat_of=row.repeat_of,
            duplicate_of=row.duplicate_of,
            flags=tuple(f for f in row.flags.split(",") if f),
            hotline_operator_id=row.hotline_operator_id,
            moderation_reasons=tuple(r for r in row.moderation_reasons.split(",") if r),
            fingerprint=row.fingerprint,
            simhash=_unsigned64(row.simhash),
            handling_version=row.handling_version,
            work_order_id=row.work_order_id,
            unit_id=row.unit_id,
            reply_count=row.reply_count,
            replied_at=to_utc(row.replied_at) if row.replied_at is not None else None,
            reply_text=row.reply_text or "",
            handling_due=to_utc(row.handling_due) if row.handling_due is not None else None,
            merged_into=row.merged_into or "",
            evaluated_reply=row.evaluated_reply,
            satisfaction=row.satisfaction,
            review_reply=row.review_reply,
        )
