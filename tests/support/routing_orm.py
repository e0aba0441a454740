"""Routing's unit of work as it stored a case before its statements were prebuilt (issue 21): the
ORM reads, merges and flushes of ``get``, ``for_case``, ``save``, ``start_case``, ``case_version``,
``keep_snapshot``, ``emit`` and ``merged_into``. Tests run the same use cases through it and through
``SqlRoutingUnitOfWork`` and compare the tables (tests/integration/test_routing_statements.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select

from services.common.outbox import append_event
from services.common.timeutil import to_utc
from services.routing.handlers import RoutingEvent, StoredWorkOrder
from services.routing.models import (
    CaseMergeRow,
    CaseSnapshotRow,
    CaseVersionRow,
    WorkOrderHistoryRow,
    WorkOrderRow,
    outbox,
)
from services.routing.store import SqlRoutingUnitOfWork
from services.routing.work_order_rows import new_history, work_order_columns


class OrmReferenceUnitOfWork(SqlRoutingUnitOfWork):
    """The ORM implementation of the methods a placement runs, as it was (history read as now)."""

    def get(self, work_order_id: str, *, for_update: bool = False) -> StoredWorkOrder | None:
        return self._orm_load(select(WorkOrderRow).where(WorkOrderRow.work_order_id == work_order_id), for_update)

    def for_case(self, case_id: str, *, for_update: bool = False) -> StoredWorkOrder | None:
        query = (
            select(WorkOrderRow)
            .where(WorkOrderRow.case_id == case_id, WorkOrderRow.node == self._node)
            .order_by(WorkOrderRow.created_at.desc())
            .limit(1)
        )
        return self._orm_load(query, for_update)

    def _orm_load(self, query: Any, for_update: bool) -> StoredWorkOrder | None:
        if for_update:
            query = query.with_for_update().execution_options(populate_existing=True)
        row = self.session.scalar(query)
        return self._stored(row, with_history=True) if row else None

    def save(self, stored: StoredWorkOrder) -> None:
        order = stored.order
        row = self.session.get(WorkOrderRow, order.id)
        if row is None:
            row = WorkOrderRow(work_order_id=order.id, created_at=to_utc(stored.created_at))
            self.session.add(row)
        for column, value in work_order_columns(stored).items():
            setattr(row, column, value)
        for values in new_history(stored):
            self.session.add(WorkOrderHistoryRow(**values))
        self.session.flush()

    def start_case(self, case_id: str, *, version: int, owner_epoch: int) -> None:
        row = self.session.get(CaseVersionRow, case_id)
        if row is None:
            self.session.add(CaseVersionRow(case_id=case_id, version=version, owner_epoch=owner_epoch))
        elif owner_epoch >= row.owner_epoch:
            row.version = max(row.version, version)
            row.owner_epoch = owner_epoch
        self.session.flush()

    def case_version(self, case_id: str) -> tuple[int, int] | None:
        row = self.session.get(CaseVersionRow, case_id)
        return None if row is None else (row.version, row.owner_epoch)

    def keep_snapshot(self, case_id: str, snapshot: bytes) -> None:
        self.session.merge(CaseSnapshotRow(case_id=case_id, snapshot=snapshot))
        self.session.flush()

    def merged_into(self, main_case_id: str) -> list[str]:
        rows = self.session.scalars(
            select(CaseMergeRow.case_id)
            .where(CaseMergeRow.main_case_id == main_case_id)
            .order_by(CaseMergeRow.merged_at, CaseMergeRow.case_id)
        )
        return list(rows)

    def emit(self, case_id: str, events: Sequence[RoutingEvent]) -> None:
        if not events:
            return
        row = self.session.get(CaseVersionRow, case_id, with_for_update=True)
        if row is None:
            row = CaseVersionRow(case_id=case_id, version=0, owner_epoch=0)
            self.session.add(row)
        counter = [row.version, row.owner_epoch]
        for bus_event, _case in self.numbered(case_id, events, counter):
            append_event(self.session, outbox, bus_event, case_id)
        row.version, row.owner_epoch = counter
        self.session.flush()
