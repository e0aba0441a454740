"""Intake's SQLAlchemy adapter: the unit of work behind ``handlers.IntakeUnitOfWork``."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime
from types import TracebackType
from typing import Any, Protocol

from google.protobuf.message import Message
from sqlalchemy import (
    ARRAY,
    BigInteger,
    Integer,
    String,
    and_,
    any_,
    bindparam,
    cast,
    func,
    literal,
    null,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.common.errors import AlreadyExists, Conflict
from services.common.events import envelope, write_event
from services.common.timeutil import to_utc
from services.intake import dedup, mapping
from services.intake.domain import (
    CLOSED_STATES,
    Case,
    CaseEvaluated,
    CaseRegistered,
    CaseState,
    CaseWithdrawn,
    Complainant,
    DomainEvent,
    ReviewRequested,
    TimelineEntry,
)
from services.intake.handlers import CaseFilter, SubmitLookup
from services.intake.models import CaseRow, CaseSequenceRow, EvaluationRow, TimelineRow, outbox

# Plain Tables for the submit's Core inserts.
_CASES = CaseRow.metadata.tables[CaseRow.__tablename__]
_TIMELINE = TimelineRow.metadata.tables[TimelineRow.__tablename__]
_PERSONAL = ("name", "id_number", "phone", "address")
_CLOSED = tuple(state.value for state in CLOSED_STATES)
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
        CaseRow.state.not_in(_CLOSED),
    )
    .limit(200)
)


def _person_match() -> Any:
    # "" never matches: cases without a phone (or ID number) store "" as their blind index.
    return or_(
        and_(bindparam("pb", type_=String) != "", CaseRow.phone_bidx == bindparam("pb", type_=String)),
        and_(bindparam("ib", type_=String) != "", CaseRow.id_number_bidx == bindparam("ib", type_=String)),
    )


def _part(kind: str, query: Any) -> Any:
    # SQLite allows no LIMIT inside a compound select: each limited part is read from a subquery.
    sub = query.subquery()
    return select(literal(kind, String).label("kind"), sub.c.case_id, sub.c.num)


_OPEN = CaseRow.state.not_in(_CLOSED)


def _lookup_query(postgres: bool) -> Any:
    """Everything a submit reads before it writes, in one round trip (they were five).

    On PostgreSQL the band probes are four array parameters (``= ANY``): the 68 expanded IN
    values made a statement psycopg would not cache and SQLAlchemy re-rendered on every call.
    """
    if postgres:
        probes = [getattr(CaseRow, f"band{n}") == any_(bindparam(f"b{n}", type_=ARRAY(Integer))) for n in range(4)]
    else:
        probes = [getattr(CaseRow, f"band{n}").in_(bindparam(f"b{n}", expanding=True)) for n in range(4)]
    return union_all(
        select(literal("key", String).label("kind"), CaseRow.case_id, cast(literal(0), BigInteger).label("num")).where(
            CaseRow.idempotency_key == bindparam("key", type_=String)
        ),
        select(literal("rate", String), cast(null(), String), cast(func.count(), BigInteger)).where(
            bindparam("rate_on", type_=Integer) == 1, _person_match(), CaseRow.received_at >= bindparam("since")
        ),
        _part(
            "dup",
            select(CaseRow.case_id, cast(literal(0), BigInteger).label("num"))
            .where(CaseRow.fingerprint == bindparam("fp", type_=String), _OPEN)
            .order_by(CaseRow.submitted_at, CaseRow.case_id)
            .limit(1),
        ),
        _part(
            "mine",
            select(CaseRow.case_id, cast(literal(0), BigInteger).label("num"))
            .where(_person_match(), _OPEN)
            .order_by(CaseRow.submitted_at.desc(), CaseRow.case_id.desc())
            .limit(1),
        ),
        _part(
            "near",
            select(CaseRow.case_id, CaseRow.simhash.label("num"))
            .where(
                or_(*probes),
                _OPEN,
            )
            .limit(200),
        ),
    )


_LOOKUP_QUERIES = {True: _lookup_query(True), False: _lookup_query(False)}


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

    def next(self, day: date) -> int:
        with self._lock:
            start, last = self._ranges.get(day, (1, 0))
            if start > last:
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


class SqlIntakeUnitOfWork:
    """One transaction. Personal fields are sealed on the way in and opened on the way out.

    With ``session`` it joins a transaction somebody else opened (an idempotent event consumer);
    then ``commit`` is left to that owner.
    """

    def __init__(
        self,
        factory: sessionmaker[Session] | None,
        cipher: Sealer,
        node: str,
        *,
        session: Session | None = None,
        numbers: CaseNumbers | None = None,
    ) -> None:
        self._numbers = numbers
        self._factory = factory
        self._cipher = cipher
        self._node = node
        self._borrowed = session is not None
        if session is not None:
            self.session = session

    def __enter__(self) -> SqlIntakeUnitOfWork:
        if not self._borrowed:
            assert self._factory is not None
            self.session = self._factory()
            self.session.begin()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._borrowed:
            return
        if self.session.in_transaction():
            self.session.rollback()
        self.session.close()

    def commit(self) -> None:
        if self._borrowed:
            self.session.flush()
            return
        try:
            self.session.commit()
        except IntegrityError as error:
            self.session.rollback()
            raise AlreadyExists("case", "idempotency key") from error

    # -- reads ---------------------------------------------------------------------------------

    def find_by_idempotency_key(self, key: str) -> Case | None:
        row = self.session.scalar(select(CaseRow).where(CaseRow.idempotency_key == key))
        return self._to_case(row) if row else None

    def get(self, case_id: str) -> Case | None:
        row = self.session.get(CaseRow, case_id)
        return self._to_case(row) if row else None

    def get_by_tracking_code(self, code: str) -> tuple[Case, str] | None:
        row = self.session.scalar(select(CaseRow).where(CaseRow.tracking_code == code))
        return (self._to_case(row), row.phone_last4) if row else None

    def timeline(self, case_id: str) -> list[TimelineEntry]:
        rows = self.session.scalars(
            select(TimelineRow).where(TimelineRow.case_id == case_id).order_by(TimelineRow.at, TimelineRow.id)
        ).all()
        return [TimelineEntry(r.case_id, to_utc(r.at), CaseState(r.state), r.summary) for r in rows]

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
        bidx = self._cipher.blind_index
        params: dict[str, Any] = {
            "key": idempotency_key,
            "rate_on": 1 if since is not None and (phone or id_number) else 0,
            "since": since if since is not None else datetime(1970, 1, 1, tzinfo=UTC),
            "pb": bidx("phone", phone) if phone else "",
            "ib": bidx("id_number", id_number) if id_number else "",
            "fp": fingerprint,
            **{f"b{band}": _probes(value) for band, value in enumerate(_bands(simhash))},
        }
        found = SubmitLookup()
        for kind, case_id, num in self.session.execute(_LOOKUP_QUERIES[self._postgres()], params):
            if kind == "key":
                found.existing = self.get(case_id)
            elif kind == "rate":
                found.recent = int(num or 0)
            elif kind == "dup":
                found.duplicate = case_id
            elif kind == "mine":
                found.mine = case_id
            else:
                found.near.append((case_id, _unsigned64(num)))
        return found

    def _postgres(self) -> bool:
        return self.session.get_bind().dialect.name == "postgresql"

    def open_case_with_fingerprint(self, fingerprint: str) -> str | None:
        return self.session.scalar(
            select(CaseRow.case_id)
            .where(CaseRow.fingerprint == fingerprint, CaseRow.state.not_in(_CLOSED))
            .order_by(CaseRow.submitted_at, CaseRow.case_id)
            .limit(1)
        )

    def open_cases_of_person(self, *, phone: str, id_number: str) -> list[str]:
        if not (phone or id_number):
            return []
        rows = self.session.scalars(
            select(CaseRow.case_id)
            .where(self._person(phone=phone, id_number=id_number), CaseRow.state.not_in(_CLOSED))
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
        return query

    def list_cases(self, filters: CaseFilter, *, after: tuple[datetime, str] | None, limit: int) -> list[Case]:
        query = self._filtered(select(CaseRow), filters)
        if after is not None:
            at, case_id = after
            query = query.where(
                or_(CaseRow.submitted_at < at, (CaseRow.submitted_at == at) & (CaseRow.case_id < case_id))
            )
        rows = self.session.scalars(
            query.order_by(CaseRow.submitted_at.desc(), CaseRow.case_id.desc()).limit(limit)
        ).all()
        return [self._to_case(row) for row in rows]

    def count_cases(self, filters: CaseFilter) -> int:
        return int(self.session.scalar(self._filtered(select(func.count()).select_from(CaseRow), filters)) or 0)

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
        if self._numbers is not None and self.session.get_bind().dialect.name == "postgresql":
            return self._numbers.next(day)
        # Inside the submit: BEGIN IMMEDIATE (SQLite) or the row lock keeps numbers unique.
        return _bump(self.session, day, 1)

    def add(self, case: Case, *, received_at: datetime) -> None:
        bidx = self._cipher.blind_index
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
        )
        for field in _PERSONAL:
            value = getattr(person, field)
            values[f"{field}_sealed"] = self._cipher.encrypt(value, context=f"cases.{field}") if value else None
        try:
            # Insert now: on PostgreSQL a concurrent retry with the same idempotency key waits here
            # for the first transaction and then fails on the unique index, which we translate.
            # A Core insert: the ORM's unit of work cost more CPU than the round trip.
            self.session.execute(_CASES.insert(), [values])
        except IntegrityError as error:
            self.session.rollback()
            raise AlreadyExists("case", "idempotency key") from error

    def save(self, case: Case, *, expected_version: int) -> None:
        result = self.session.execute(
            update(CaseRow)
            .where(CaseRow.case_id == case.case_id, CaseRow.version == expected_version)
            .values(
                state=case.state.value,
                version=case.version,
                flags=",".join(case.flags),
                updated_at=case.updated_at,
                handling_version=case.handling_version,
                work_order_id=case.work_order_id,
                unit_id=case.unit_id,
                reply_count=case.reply_count,
                replied_at=case.replied_at,
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
        case = event.case
        self.session.flush()
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
        write_event(
            self.session,
            outbox,
            envelope(
                payload_field=field,
                payload=payload,
                case_id=case.case_id,
                version=case.version,
                owner_node=case.owner_node,
                owner_epoch=case.owner_epoch,
                origin_node=self._node,
                origin_service="intake",
                occurred_at=case.updated_at,
            ),
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
            evaluated_reply=row.evaluated_reply,
            satisfaction=row.satisfaction,
            review_reply=row.review_reply,
        )
