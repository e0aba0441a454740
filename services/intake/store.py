"""Intake's SQLAlchemy adapter: the unit of work behind ``handlers.IntakeUnitOfWork``."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from datetime import date, datetime
from types import TracebackType
from typing import Any

import psycopg
from lianxin.events.v1 import events_pb2
from sqlalchemy import Connection, Engine, bindparam, or_, select, text, tuple_, union_all
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.common.db import COUNT_LIMIT, bounded_count, read_transaction, reading_now
from services.common.errors import AlreadyExists, Conflict
from services.common.events import to_bus_event, write_event
from services.common.outbox import append_event
from services.common.service import BusEvent, utc_now
from services.common.timeutil import to_utc
from services.intake import mapping
from services.intake.case_rows import Sealer, case_envelope, case_values, to_case
from services.intake.domain import (
    Case,
    CaseRegistered,
    CaseState,
    CommandForOwner,
    DomainEvent,
    TimelineEntry,
)
from services.intake.handlers import CaseFilter, SubmitLookup
from services.intake.models import (
    PUBLISHED_TERMS,
    CaseRow,
    EvaluationRow,
    TimelineRow,
    outbox,
)
from services.intake.notices import Notice, NoticeStatus
from services.intake.submit_sql import CASES as _CASES
from services.intake.submit_sql import LOOKUP_QUERIES as _LOOKUP_QUERIES
from services.intake.submit_sql import NEAR_QUERY as _NEAR_QUERY
from services.intake.submit_sql import NOTICES_OF as _NOTICES_OF
from services.intake.submit_sql import OPEN as _OPEN
from services.intake.submit_sql import SAVE_CASE as _SAVE_CASE
from services.intake.submit_sql import TIMELINE as _TIMELINE
from services.intake.submit_sql import PgConnection as _PgConnection
from services.intake.submit_sql import PgSubmitPath
from services.intake.submit_sql import bands as _bands
from services.intake.submit_sql import bump_sql as _bump_sql
from services.intake.submit_sql import notice_insert as _notice_insert
from services.intake.submit_sql import probe_params as _probe_params
from services.intake.submit_sql import probes as _probes
from services.intake.submit_sql import signed64 as _signed64
from services.intake.submit_sql import unsigned64 as _unsigned64


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
    connection = session.connection()
    return int(connection.execute(_bump_sql(connection.dialect.name), {"day": day, "by": by}).scalar_one())


# GetCase's reads (the case page's and TrackCase's), built once with a bound case id (issue 17: the
# ORM spent most of GetCase's ~1 ms of CPU composing and loading them). Core rows carry the columns
# ``to_case`` reads, as PostgreSQL's ``SELECT *`` rows do.
_GET_CASE = select(_CASES).where(_CASES.c.case_id == bindparam("case_id"))
_GET_TIMELINE = (
    select(_TIMELINE.c.case_id, _TIMELINE.c.at, _TIMELINE.c.state, _TIMELINE.c.summary)
    .where(_TIMELINE.c.case_id == bindparam("case_id"))
    .order_by(_TIMELINE.c.at, _TIMELINE.c.id)
)

_ADD_TIMELINE = _TIMELINE.insert()
# A consumer transaction's saved cases (``Session.info``), by case id: what ``get`` gives back.
_SAVED_CASES = "intake_saved_cases"


class SqlIntakeUnitOfWork:
    """One transaction. Personal fields are sealed on the way in and opened on the way out.

    With ``session`` it joins a transaction somebody else opened (an idempotent event consumer);
    then ``commit`` is left to that owner. With ``submit_path`` (PostgreSQL) a submit's lookup
    and writes bypass the session (``PgSubmitPath``); the session opens only when something else
    is asked for. With ``reads`` it only reads, in a ``read_transaction`` of that engine, and builds
    no ORM session (GetCase: the case and its timeline by statements built once).
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
        reads: Engine | None = None,
    ) -> None:
        self._reads = reads
        self._read_connection: Connection | None = None
        self._read_scope = ExitStack()
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
        if self._reads is not None:
            self._read_connection = self._read_scope.enter_context(read_transaction(self._reads))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._read_connection is not None:
            self._read_connection = None
            self._read_scope.close()
        if self._pg is not None:
            self._pg.release()
            self._pg = None
        if self._borrowed or self._session is None:
            return
        if self._session.in_transaction():
            self._session.rollback()
        self._session.close()

    def commit(self) -> None:
        if self._reads is not None:
            raise RuntimeError("a read-only unit of work cannot commit")
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
        if self._borrowed and self._session is not None:
            # A consumer's transaction that saved this case already (a relay batch follows a placement's
            # three events of one case in one transaction): the case as saved, which the row now holds
            # and keeps, since the update holds its lock to the commit. Two of three reads saved.
            saved = self._session.info.get(_SAVED_CASES)
            if saved is not None and case_id in saved:
                return saved[case_id]  # type: ignore[no-any-return]
        if self._pg is not None:
            found = self._pg.fetch_row(self._pg_sql().get_sql, (case_id,))
            return self._to_case(found) if found else None
        connection = self._read_connection
        if connection is None:
            session = self.session
            if not reading_now() and (session.new or session.dirty or session.deleted):
                row = session.get(CaseRow, case_id)
                return self._to_case(row) if row else None
            connection = session.connection()
        # A query RPC, or nothing pending for the ORM to flush first (an event consumer following the
        # case, the notice sender): the row by a statement built once, not through the ORM.
        row_read: Any = connection.execute(_GET_CASE, {"case_id": case_id}).first()  # as CaseRow reads
        return self._to_case(row_read) if row_read else None

    def _pg_sql(self) -> PgSubmitPath:
        assert self._submit_path is not None
        return self._submit_path

    def get_by_tracking_code(self, code: str) -> tuple[Case, str] | None:
        row = self.session.scalar(select(CaseRow).where(CaseRow.tracking_code == code))
        return (self._to_case(row), row.phone_last4) if row else None

    def timeline(self, case_id: str) -> list[TimelineEntry]:
        rows: Any
        if self._read_connection is not None:
            rows = self._read_connection.execute(_GET_TIMELINE, {"case_id": case_id})
        elif reading_now():  # nothing pending to flush first: the statement built once
            rows = self.session.execute(_GET_TIMELINE, {"case_id": case_id})
        else:
            rows = self.session.scalars(
                select(TimelineRow).where(TimelineRow.case_id == case_id).order_by(TimelineRow.at, TimelineRow.id)
            )
        return [TimelineEntry(r.case_id, to_utc(r.at), CaseState(r.state), r.summary) for r in rows]

    def add_notice(self, notice: Notice) -> bool:
        """Queue a progress notice (办事进度推送); False when one with its id exists (a redelivery)."""
        connection = self.session.connection()
        values = {
            "notice_id": notice.notice_id,
            "case_id": notice.case_id,
            "kind": notice.kind,
            "channel": notice.channel,
            "text": notice.text,
            "created_at": notice.created_at,
            "state": "pending",
            "attempts": 0,
            "next_attempt_at": notice.created_at,
            "last_error": "",
            "sent_at": None,
        }
        return connection.execute(_notice_insert(connection.dialect.name), values).first() is not None

    def notices(self, case_id: str) -> list[NoticeStatus]:
        """The case's progress notices, oldest first (TrackCase shows them)."""
        rows = self.session.connection().execute(_NOTICES_OF, {"case_id": case_id})
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
            params.update(_probe_params(bands))
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
        return case_values(case, received_at, self._cipher, self._blind_index)

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
        values = {
            "b_case_id": case.case_id,
            "b_expected_version": expected_version,
            "state": case.state.value,
            "version": case.version,
            "owner_node": case.owner_node,
            "owner_epoch": case.owner_epoch,
            "flags": ",".join(case.flags),
            "updated_at": case.updated_at,
            "handling_version": case.handling_version,
            "work_order_id": case.work_order_id,
            "unit_id": case.unit_id,
            "reply_count": case.reply_count,
            "replied_at": case.replied_at,
            "reply_text": case.reply_text,
            "handling_due": case.handling_due,
            "merged_into": case.merged_into,
            "evaluated_reply": case.evaluated_reply,
            "satisfaction": case.satisfaction,
            "review_reply": case.review_reply,
        }
        self.session.flush()  # what the session holds goes first, as the session's own execute did
        result = self.session.connection().execute(_SAVE_CASE, values)
        if getattr(result, "rowcount", 1) != 1:
            raise Conflict(f"case {case.case_id} changed since it was read")
        if self._borrowed:
            self.session.info.setdefault(_SAVED_CASES, {})[case.case_id] = case

    def add_timeline(self, entry: TimelineEntry) -> None:
        self.session.flush()  # what the session holds goes first, as the session's own execute did
        values = {"case_id": entry.case_id, "at": entry.at, "state": entry.state.value, "summary": entry.summary}
        # On the connection: the session's execute of a list (its bulk insert path) cost about half as
        # much again as the insert, and every followed step and citizen's action adds an entry.
        self.session.connection().execute(_ADD_TIMELINE, values)

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
        return case_envelope(event, self._node)

    def _to_case(self, row: CaseRow) -> Case:
        return to_case(row, self._cipher)
