"""video's storage (``ports.VideoStorage``): ``VideoStore`` opens one ``unit_of_work.SqlVideoUnitOfWork``
per transaction on the service's own database (the use cases in ``handlers`` hold the rules), and
keeps what is no use case's: the sweep's one-read look for work and the case owners video follows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.common.calendar import WorkingCalendar
from services.common.clock import to_utc as aware
from services.common.db import read_transaction
from services.common.errors import Conflict
from services.common.inbox import after_commit, consumer_transaction
from services.video import consult
from services.video.domain import CaseOwner, HoldState, RemoteState, VisitState
from services.video.models import CaseOwnerRow, ConsultationRow, HoldRow, RemoteHoldRow, VisitRow
from services.video.rows import Sealer
from services.video.unit_of_work import DUE_STATES, SharedRead, SqlVideoUnitOfWork, inline_state, reserve

OWNER_CACHE_SIZE = 100_000  # cases whose owner epoch this process remembers writing


class VideoStore:
    """The storage behind video's use cases (``ports.VideoStorage``): a unit of work per transaction."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        cipher: Sealer,
        node: str,
        calendar: WorkingCalendar,
        clock: Callable[[], datetime],
    ) -> None:
        self._factory = factory
        self._engine: Engine = factory.kw["bind"]
        self._cipher = cipher
        self.node = node
        self.calendar = calendar
        self._clock = clock
        # Epochs this process already wrote to video_case_owners: most case events repeat the epoch
        # known (every work order change), so they cost no write. The table stays the authority.
        self._owner_epochs: dict[str, int] = {}
        # The transaction of ``reading_together`` in this thread's call, if any (one per store: a test
        # process runs several nodes).
        self._shared: ContextVar[SharedRead | None] = ContextVar(f"video_shared_read_{id(self)}", default=None)

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        session = self._factory()
        try:
            with session.begin():
                yield session
        except IntegrityError as error:
            raise Conflict("the resource was booked by someone else meanwhile; pick another slot") from error
        finally:
            session.close()

    @contextmanager
    def reading_together(self) -> Iterator[None]:
        """Every unit of work begun inside (in this call) reads in one transaction, rolled back at the
        end: a case page's four video lists (GetCaseVideo) begin one read instead of four (issue 17).
        Reads only: a unit of work that commits inside is refused. A ``read_transaction`` on a Core
        connection: no ORM session unless one of the reads needs it (``SharedRead``)."""
        with read_transaction(self._engine) as connection:
            shared = SharedRead(connection)
            token = self._shared.set(shared)
            try:
                yield
            finally:
                self._shared.reset(token)
                shared.close()

    @contextmanager
    def begin(self) -> Iterator[SqlVideoUnitOfWork]:
        shared = self._shared.get()
        if shared is not None:
            uow = SqlVideoUnitOfWork(shared, cipher=self._cipher, node=self.node, clock=self._clock)
            yield uow
            if uow.committed:
                raise RuntimeError("a unit of work committed inside VideoStore.reading_together()")
            return
        with self._tx() as session:
            uow = SqlVideoUnitOfWork(session, cipher=self._cipher, node=self.node, clock=self._clock)
            yield uow
            if not uow.committed:
                session.rollback()  # a unit of work that did not commit leaves nothing behind

    @contextmanager
    def consuming(self) -> Iterator[SqlVideoUnitOfWork]:
        """An event consumer's unit of work: inside the relay's batch, the batch's transaction (committed
        with it, so a copy never waits on the batch's own write lock), else one of its own."""
        with consumer_transaction(self._factory) as session:
            yield SqlVideoUnitOfWork(session, cipher=self._cipher, node=self.node, clock=self._clock)

    def _reserve(self, s: Session, resource: str, start: datetime, end: datetime, owner: str) -> None:
        reserve(s, resource, start, end, owner)

    def now(self) -> datetime:
        return aware(self._clock())

    def has_sweep_work(self, horizon: timedelta = timedelta(hours=25)) -> bool:
        """Whether the sweep has anything to look at: a hold, a half-done booking, consultation or move, a remote
        hold in flight, or a visit or consultation due within ``horizon`` (its reminder). One read, no write lock."""
        now = self.now()
        busy = (
            RemoteState.ASKED.value,
            RemoteState.HELD.value,
            RemoteState.CONFIRMING.value,
            RemoteState.RELEASING.value,
        )
        checks = (
            select(HoldRow.hold_id).where(HoldRow.state == HoldState.HELD.value),
            select(VisitRow.visit_id).where(VisitRow.state == inline_state(VisitState.HOLDING.value)),
            select(ConsultationRow.consultation_id).where(
                ConsultationRow.state == consult.ConsultationState.HOLDING.value
            ),
            select(RemoteHoldRow.hold_id).where(RemoteHoldRow.state.in_(busy)),
            select(VisitRow.visit_id).where(
                VisitRow.state.in_(DUE_STATES),
                VisitRow.starts_at > now,
                VisitRow.starts_at <= now + horizon,
            ),
            select(ConsultationRow.consultation_id).where(
                ConsultationRow.state == consult.ConsultationState.BOOKED.value,
                ConsultationRow.replica.is_(False),
                ConsultationRow.starts_at > now,
                ConsultationRow.starts_at <= now + horizon,
            ),
        )
        with self._factory() as session:
            return any(session.execute(check.limit(1)).first() is not None for check in checks)

    def note_owner(self, case_id: str, owner: CaseOwner) -> None:
        """Remember the case's owner when ``owner.epoch`` is newer than the one known (idempotent)."""
        if not case_id or len(case_id) > 64 or self._owner_epochs.get(case_id, 0) >= owner.epoch:
            return
        # The relay's batch of events to video shares one transaction (consumer_transaction).
        # One prebuilt upsert on the session's connection: building it and the ORM's statement
        # machinery cost more than executing it, once per new case at every tier.
        with consumer_transaction(self._factory) as s:
            connection = s.connection()
            connection.execute(
                _owner_upsert(connection.dialect.name),
                {"case_id": case_id, "node": owner.node, "epoch": owner.epoch},
            )

        def remember() -> None:  # once stored: a batch that rolls back must not leave the epoch known
            if len(self._owner_epochs) >= OWNER_CACHE_SIZE:
                self._owner_epochs.clear()  # bounded; forgetting only costs a redundant (raise-only) upsert
            self._owner_epochs[case_id] = max(owner.epoch, self._owner_epochs.get(case_id, 0))

        after_commit(remember)


_OWNER_UPSERTS: dict[str, Any] = {}


def _owner_upsert(dialect: str) -> Any:
    """The case owner's insert-or-raise-the-epoch statement of ``dialect``, built on first use."""
    built = _OWNER_UPSERTS.get(dialect)
    if built is None:
        insert: Any = (postgresql if dialect == "postgresql" else sqlite).insert(CaseOwnerRow)
        insert = insert.values(
            case_id=bindparam("case_id"), owner_node=bindparam("node"), owner_epoch=bindparam("epoch")
        )
        built = _OWNER_UPSERTS[dialect] = insert.on_conflict_do_update(
            index_elements=[CaseOwnerRow.case_id],
            set_={"owner_node": insert.excluded.owner_node, "owner_epoch": insert.excluded.owner_epoch},
            where=CaseOwnerRow.owner_epoch < insert.excluded.owner_epoch,
        )
    return built
