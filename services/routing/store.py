"""Routing's SQLAlchemy adapter: one unit of work over the table families (persistence only).

``work_order_sql`` (work orders, lists, sweep batches) over ``work_order_rows`` (their columns and
JSON), ``case_rows`` (versions, snapshots, repeats, merges, owners, supervisions), ``evaluation_rows``
(第三方评价) and ``routing_outbox`` (events and commands with the case's next version).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from datetime import datetime
from types import TracebackType
from typing import Any

from lianxin.common.v1 import common_pb2
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from services.common.db import read_transaction
from services.common.regions import RegionTree
from services.routing.case_rows import CaseTables, case_title, supervision_values
from services.routing.evaluation import SampleItem
from services.routing.evaluation_rows import EvaluationTables
from services.routing.handlers import BatchChange, WorkOrderQuery
from services.routing.inbox import InboxRow
from services.routing.routing_outbox import RoutingOutbox
from services.routing.work_order_rows import (
    HISTORY,
    SUPERVISION,
    UPDATE_WORK_ORDER,
    bulk_insert,
    bulk_update,
    inbox_row,
    new_history,
    work_order_columns,
)
from services.routing.work_order_sql import WorkOrderTables


class SqlRoutingUnitOfWork(WorkOrderTables, CaseTables, EvaluationTables, RoutingOutbox):
    """The ``RoutingUnitOfWork`` of ``handlers`` on SQLAlchemy: its own transaction, or the consumer's."""

    def __init__(
        self,
        factory: sessionmaker[Session] | None = None,
        *,
        session: Session | None = None,
        reads: Engine | None = None,
        node: str,
        regions: RegionTree | None = None,
    ) -> None:
        """Either opens its own transaction from ``factory``, or joins ``session`` (event consumers,
        whose inbox row must commit in the same transaction), or only reads in a ``read_transaction``
        of ``reads`` (the query RPCs: their lists run Core statements and need no ORM session).

        With ``regions``, work order events of a case registered at a node that is neither this node
        nor an ancestor also go to that node as a command (``_handling_command``)."""
        self._factory = factory
        self._joined = session
        self._node = node
        self._regions = regions
        self._absent = set()
        self._versions = {}
        self._engine = reads
        self._reads = None
        self._read_scope = ExitStack()
        self.session: Session

    def __enter__(self) -> SqlRoutingUnitOfWork:
        if self._engine is not None:
            self._reads = self._read_scope.enter_context(read_transaction(self._engine))
        elif self._joined is not None:
            self.session = self._joined
        else:
            assert self._factory is not None
            self.session = self._factory()
            self.session.begin()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._engine is not None:
            self._reads = None
            self._read_scope.close()
        elif self._joined is None:
            if self.session.in_transaction():
                self.session.rollback()
            self.session.close()

    def commit(self) -> None:
        if self._engine is not None:
            raise RuntimeError("a read-only unit of work cannot commit")
        if self._joined is None:
            self.session.commit()

    def save_batch(self, changes: Sequence[BatchChange]) -> None:
        """Write a batch of already-stored work orders with bulk statements, outbox last.

        Only for work orders loaded as Core rows (``due_for_sweep``, ``provisional_batch``): an ORM
        object of the same row in this session would not see these updates.
        """
        if not changes:
            return
        self.session.flush()
        updates: list[dict[str, Any]] = []
        history: list[dict[str, Any]] = []
        supervisions: list[dict[str, Any]] = []
        for change in changes:
            updates.append({**work_order_columns(change.stored), "b_work_order_id": change.stored.order.id})
            history += new_history(change.stored)
            supervisions += [supervision_values(s) for s in change.supervisions]
        bulk_update(self.session, UPDATE_WORK_ORDER, updates)
        bulk_insert(self.session, HISTORY, history)
        bulk_insert(self.session, SUPERVISION, supervisions)
        self.emit_many([(c.stored.order.case_id, c.events) for c in changes])

    def list_inbox(
        self, query: WorkOrderQuery, *, after: tuple[datetime, str] | None, limit: int
    ) -> tuple[list[InboxRow], int]:
        """The work orders of ``list_work_orders`` (same ranges and counts) as a list shows them, with
        the cases' titles."""
        rows, total = self.list_rows(query, after=after, limit=limit, inbox=True)
        return [inbox_row(r, case_title(r.snapshot)) for r in rows], total

    def sampled_texts(self, items: Sequence[SampleItem]) -> dict[str, tuple[str, str, str]]:
        out: dict[str, tuple[str, str, str]] = {}
        for item in items:
            case = common_pb2.Case()
            case.ParseFromString(self.case_snapshot(item.case_id))
            stored = self.get(item.work_order_id)
            reply = stored.order.reply_text if stored is not None else ""
            out[item.case_id] = (case.title, case.body, reply or "")
        return out
