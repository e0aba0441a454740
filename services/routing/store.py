"""Routing's SQLAlchemy adapter: work orders, their history, and the events they emit."""

from __future__ import annotations

import json
from datetime import datetime
from types import TracebackType

from lianxin.common.v1 import common_pb2
from lianxin.events.v1 import events_pb2
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.common.events import envelope, write_event
from services.common.timeutil import to_timestamp, to_utc
from services.routing.handlers import HistoryEntry, RegisteredCase, WorkOrderView
from services.routing.models import WorkOrderHistoryRow, WorkOrderRow, outbox


class SqlRoutingUnitOfWork:
    def __init__(self, factory: sessionmaker[Session] | None = None, *, session: Session | None = None, node: str) -> None:
        """Either opens its own transaction from ``factory`` or joins ``session`` (event consumers,
        whose inbox row must commit in the same transaction)."""
        self._factory = factory
        self._joined = session
        self._node = node
        self.session: Session

    def __enter__(self) -> SqlRoutingUnitOfWork:
        if self._joined is not None:
            self.session = self._joined
        else:
            assert self._factory is not None
            self.session = self._factory()
            self.session.begin()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._joined is None:
            if self.session.in_transaction():
                self.session.rollback()
            self.session.close()

    def commit(self) -> None:
        if self._joined is None:
            self.session.commit()

    def get(self, work_order_id: str) -> WorkOrderView | None:
        row = self.session.get(WorkOrderRow, work_order_id)
        return self._view(row) if row else None

    def for_case(self, case_id: str) -> WorkOrderView | None:
        row = self.session.scalar(
            select(WorkOrderRow).where(WorkOrderRow.case_id == case_id, WorkOrderRow.node == self._node)
        )
        return self._view(row) if row else None

    def add(self, work_order: WorkOrderView, *, case: RegisteredCase) -> None:
        self.session.add(
            WorkOrderRow(
                work_order_id=work_order.work_order_id,
                case_id=work_order.case_id,
                node=work_order.node,
                unit_id=work_order.unit_id,
                category=work_order.category,
                region_code=work_order.region_code,
                state=work_order.state,
                manual_queue=int(work_order.manual_queue),
                hand_off_to=work_order.hand_off_to,
                deadlines=json.dumps({k: v.isoformat() for k, v in work_order.deadlines.items()}),
                created_at=work_order.created_at,
                updated_at=work_order.updated_at,
            )
        )
        for entry in work_order.history:
            self.session.add(
                WorkOrderHistoryRow(
                    work_order_id=work_order.work_order_id,
                    at=entry.at,
                    actor=entry.actor,
                    action=entry.action,
                    from_state=entry.from_state,
                    to_state=entry.to_state,
                    reason=entry.reason,
                )
            )
        payload = events_pb2.WorkOrderCreated(
            work_order_id=work_order.work_order_id,
            unit_id=work_order.unit_id,
            node=work_order.node,
            category=work_order.category,
            region_code=work_order.region_code,
            deadlines=[common_pb2.Deadline(kind=k, due_at=to_timestamp(v)) for k, v in work_order.deadlines.items()],
            manual_queue=work_order.manual_queue,
        )
        # Routing's first event for the case: the case version moves on from intake's registration.
        write_event(
            self.session,
            outbox,
            envelope(
                payload_field="work_order_created",
                payload=payload,
                case_id=case.case_id,
                version=case.version + 1,
                owner_node=self._node,
                owner_epoch=case.owner_epoch,
                origin_node=self._node,
                origin_service="routing",
                occurred_at=work_order.created_at,
            ),
        )

    def _view(self, row: WorkOrderRow) -> WorkOrderView:
        history = self.session.scalars(
            select(WorkOrderHistoryRow)
            .where(WorkOrderHistoryRow.work_order_id == row.work_order_id)
            .order_by(WorkOrderHistoryRow.id)
        ).all()
        return WorkOrderView(
            work_order_id=row.work_order_id,
            case_id=row.case_id,
            node=row.node,
            unit_id=row.unit_id,
            category=row.category,
            region_code=row.region_code,
            state=row.state,
            manual_queue=bool(row.manual_queue),
            hand_off_to=row.hand_off_to,
            deadlines={k: datetime.fromisoformat(v) for k, v in json.loads(row.deadlines).items()},
            created_at=to_utc(row.created_at),
            updated_at=to_utc(row.updated_at),
            history=[
                HistoryEntry(to_utc(h.at), h.actor, h.action, h.from_state, h.to_state, h.reason) for h in history
            ],
        )
