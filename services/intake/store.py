"""Intake's SQLAlchemy adapter: the unit of work behind ``handlers.IntakeUnitOfWork``."""

from __future__ import annotations

from datetime import date
from types import TracebackType

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.common.crypto import FieldCipher
from services.common.errors import AlreadyExists
from services.common.events import envelope, write_event
from services.common.timeutil import to_utc
from services.intake import mapping
from services.intake.domain import Case, CaseRegistered, CaseState, Complainant, TimelineEntry
from services.intake.models import CaseRow, CaseSequenceRow, TimelineRow, outbox

_PERSONAL = ("name", "id_number", "phone", "address")


class SqlIntakeUnitOfWork:
    """One transaction. Personal fields are sealed on the way in and opened on the way out."""

    def __init__(self, factory: sessionmaker[Session], cipher: FieldCipher, node: str) -> None:
        self._factory = factory
        self._cipher = cipher
        self._node = node
        self.session: Session

    def __enter__(self) -> SqlIntakeUnitOfWork:
        self.session = self._factory()
        self.session.begin()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.session.in_transaction():
            self.session.rollback()
        self.session.close()

    def commit(self) -> None:
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

    # -- writes --------------------------------------------------------------------------------

    def next_case_number(self, day: object) -> int:
        assert isinstance(day, date)
        # Make sure the day's counter exists without racing (ON CONFLICT DO NOTHING), then bump it:
        # the UPDATE takes the row lock on PostgreSQL, and SQLite's BEGIN IMMEDIATE already
        # serialises writers, so two submits never get the same number.
        dialect = self.session.get_bind().dialect.name
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        self.session.execute(insert(CaseSequenceRow).values(day=day, last=0).on_conflict_do_nothing())
        result = self.session.execute(
            update(CaseSequenceRow)
            .where(CaseSequenceRow.day == day)
            .values(last=CaseSequenceRow.last + 1)
            .returning(CaseSequenceRow.last)
        ).scalar_one()
        return int(result)

    def add(self, case: Case) -> None:
        bidx = self._cipher.blind_index
        person = case.complainant
        row = CaseRow(
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
        )
        for field in _PERSONAL:
            value = getattr(person, field)
            setattr(row, f"{field}_sealed", self._cipher.encrypt(value, context=f"cases.{field}") if value else None)
        self.session.add(row)
        try:
            # Flush now: on PostgreSQL a concurrent retry with the same idempotency key waits here
            # for the first transaction and then fails on the unique index, which we translate.
            self.session.flush()
        except IntegrityError as error:
            self.session.rollback()
            raise AlreadyExists("case", "idempotency key") from error

    def add_timeline(self, entry: TimelineEntry) -> None:
        self.session.add(TimelineRow(case_id=entry.case_id, at=entry.at, state=entry.state.value, summary=entry.summary))

    def emit(self, event: CaseRegistered) -> None:
        case = event.case
        self.session.flush()
        write_event(
            self.session,
            outbox,
            envelope(
                payload_field="case_registered",
                payload=mapping.case_registered(case),
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
            field: self._cipher.decrypt(blob, context=f"cases.{field}") if (blob := getattr(row, f"{field}_sealed")) else ""
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
        )
