"""Reading and writing work orders: by id or case (locked for a change), the lists and inboxes, the
sweep's batches and the open counts."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Integer, Table, bindparam, func, insert, select, text, tuple_, union_all

from services.common.db import COUNT_LIMIT
from services.common.timeutil import to_utc
from services.routing.domain import HistoryEntry
from services.routing.handlers import FAR_FUTURE, StoredWorkOrder, WorkOrderQuery
from services.routing.models import PROVISIONAL_SQL, CaseSnapshotRow, WorkOrderRow
from services.routing.work_order_rows import (
    HISTORY,
    OPEN,
    STATE_OF,
    UPDATE_WORK_ORDER,
    WO,
    SessionBound,
    decode_order,
    new_history,
    work_order_columns,
)


@dataclass(frozen=True)
class _ListShape:
    """Which filters a ListWorkOrders query has: its statements depend on that, not on the values."""

    unit: bool
    case: bool
    leader_queue: bool
    assisting: bool
    manual: bool
    overdue: bool
    due_before: bool
    after: bool
    states: int


def _like_escaped(value: str) -> str:
    return value.replace("/", "//").replace("%", "/%").replace("_", "/_")


_SNAPSHOTS = cast(Table, CaseSnapshotRow.__table__)
# What an inbox row shows (``inbox_row``): the other columns of ``work_orders`` (times, the queues,
# the sweep's) cost their fetch and their conversion to Python on every row for nothing.
_INBOX_COLUMNS = (WO.c.work_order_id, WO.c.case_id, WO.c.category, WO.c.state, WO.c.unit_id, WO.c.data, WO.c.next_due)


@dataclass(frozen=True)
class _ListStatements:
    count: Any  # one column per state counted apart (or one)
    page: Any  # the work orders' rows
    inbox: Any  # the same page as an inbox shows it: ``_INBOX_COLUMNS`` and the case's snapshot (its title)


def _with_snapshot(page: Any) -> Any:
    """An inbox page's rows with their case's snapshot (for its title; NULL when routing kept none):
    joined after the page's LIMIT, so it looks up a page of cases, not every range's rows. A
    statement of its own was ~13 % of ListInbox's node CPU (issue 17)."""
    done = page.subquery("page")
    return (
        select(done, _SNAPSHOTS.c.snapshot)
        .select_from(done.outerjoin(_SNAPSHOTS, _SNAPSHOTS.c.case_id == done.c.case_id))
        .order_by(done.c.next_due, done.c.work_order_id)
    )


@functools.lru_cache(maxsize=256)
def _list_statements(shape: _ListShape) -> _ListStatements:
    """The count statement (one column per state counted apart) and the page statements of a work
    order list, with bound parameters.

    Built once per shape: building the inbox's union of seven ranges took the node ~30 ms of
    Python per request, far more than SQLite took to run it (issue 17, the console's inbox).
    """
    conditions: list[Any] = [WO.c.node == bindparam("node")]
    if shape.unit:
        conditions.append(WO.c.unit_id == bindparam("unit_id"))
    if shape.case:
        conditions.append(WO.c.case_id == bindparam("case_id"))
    if shape.leader_queue:
        conditions.append(WO.c.leader_queue != "")
    if shape.assisting:
        conditions.append(WO.c.assisting.like(bindparam("assisting"), escape="/"))
    if shape.manual:
        conditions.append(WO.c.manual_queue == 1)
    if shape.overdue:
        conditions += [WO.c.next_due < bindparam("now"), WO.c.state.in_(OPEN)]
    if shape.due_before:
        conditions += [
            WO.c.next_due >= bindparam("now"),
            WO.c.next_due <= bindparam("due_before"),
            WO.c.state.in_(OPEN),
        ]
    order = (WO.c.next_due, WO.c.work_order_id)
    limit = bindparam("limit", type_=Integer)
    after = (
        [tuple_(*order) > tuple_(bindparam("after_due", type_=WO.c.next_due.type), bindparam("after_id"))]
        if shape.after
        else []
    )

    def counted(query: Any) -> Any:
        # At most COUNT_LIMIT + 1 read (bounded_count's statement); the ORDER BY names the index.
        return select(func.count()).select_from(query.limit(COUNT_LIMIT + 1).subquery())

    if not shape.states or shape.case:
        # One case's work orders (its own index), or every state (a count stopped at COUNT_LIMIT).
        in_states = [WO.c.state.in_([bindparam(f"in_state_{i}") for i in range(shape.states)])] if shape.states else []
        count = counted(select(WO.c.work_order_id).where(*conditions, *in_states))

        def one_range(*columns: Any) -> Any:
            return select(*columns).where(*conditions, *in_states, *after).order_by(*order).limit(limit)

        return _ListStatements(count, one_range(WO), _with_snapshot(one_range(*_INBOX_COLUMNS)))
    # An inbox (a unit's, or the node's): one ordered range of ix_work_orders_unit_state or
    # ix_work_orders_state_node_due per state, each at most a page, merged, and counted the same way.
    # In one ordered walk by due date the planner read past every closed work order whenever
    # fewer matched than a page (issue 20), and with the states in one IN PostgreSQL's generic
    # plan read the whole work order table (issue 17, the console's inbox).
    per_state = [WO.c.state == bindparam(f"in_state_{i}") for i in range(shape.states)]
    # The states' counts in one statement, one column each (one round of SQLAlchemy's execution
    # instead of one per state: seven statements were ~30 % of the inbox's node CPU, issue 17).
    counts = select(
        *(
            counted(select(WO.c.work_order_id).where(*conditions, state).order_by(*order)).scalar_subquery()
            for state in per_state
        )
    )

    def merged_ranges(*columns: Any) -> Any:
        # The ranges merged by their keys alone (read from the state index), and only the page's
        # rows then read from the table: not a page of table rows for every state.
        parts = [
            select(select(*order).where(*conditions, state, *after).order_by(*order).limit(limit).subquery())
            for state in per_state
        ]
        merged = union_all(*parts).subquery()
        keys = select(merged).order_by(merged.c.next_due, merged.c.work_order_id).limit(limit).subquery("keys")
        return (
            select(*columns)
            .select_from(keys.join(WO, WO.c.work_order_id == keys.c.work_order_id))
            .order_by(keys.c.next_due, keys.c.work_order_id)
        )

    return _ListStatements(counts, merged_ranges(WO), _with_snapshot(merged_ranges(*_INBOX_COLUMNS)))


# A work order by id or by case (FOR UPDATE or not), its history, and its inserts: built once, run on
# the session's connection (the consumers placing and following cases run them for every event).
_WORK_ORDER = select(WO).where(WO.c.work_order_id == bindparam("work_order_id"))
_BY_ID = {False: _WORK_ORDER, True: _WORK_ORDER.with_for_update()}
_CASE_WORK_ORDER = (
    select(WO)
    .where(WO.c.case_id == bindparam("case_id"), WO.c.node == bindparam("node"))
    .order_by(WO.c.created_at.desc())
    .limit(1)
)
_BY_CASE = {False: _CASE_WORK_ORDER, True: _CASE_WORK_ORDER.with_for_update()}
_HISTORY_OF = select(HISTORY).where(HISTORY.c.work_order_id == bindparam("work_order_id")).order_by(HISTORY.c.id)
# A list's histories (a case page's work orders with_history): one statement for the page's work orders.
_HISTORIES_OF = (
    select(HISTORY)
    .where(HISTORY.c.work_order_id.in_(bindparam("work_order_ids", expanding=True)))
    .order_by(HISTORY.c.id)
)
_INSERT_WORK_ORDER = insert(WO)
_INSERT_HISTORY = insert(HISTORY)


class WorkOrderTables(SessionBound):
    """``work_orders`` and their history."""

    def get(self, work_order_id: str, *, for_update: bool = False) -> StoredWorkOrder | None:
        row = self._connection().execute(_BY_ID[for_update], {"work_order_id": work_order_id}).first()
        if row is None:
            self._absent.add(work_order_id)  # its save inserts without looking again
            return None
        return self._stored(row, with_history=True)

    def for_case(self, case_id: str, *, for_update: bool = False) -> StoredWorkOrder | None:
        params = {"case_id": case_id, "node": self._node}
        row = self._connection().execute(_BY_CASE[for_update], params).first()
        return self._stored(row, with_history=True) if row else None

    def save(self, stored: StoredWorkOrder) -> None:
        """The work order's columns (an insert when ``get`` found none in this unit of work, else an
        update, an insert if it matched nothing) and its new history rows: prebuilt Core statements,
        not the ORM's read, change and flush (issue 21: a placement's CPU was mostly SQLAlchemy's)."""
        order = stored.order
        self.session.flush()  # anything the ORM holds goes first, as the ORM's own flush would
        connection = self.session.connection()
        columns = work_order_columns(stored)
        inserted = {**columns, "work_order_id": order.id, "created_at": to_utc(stored.created_at)}
        if order.id in self._absent:
            self._absent.discard(order.id)
            connection.execute(_INSERT_WORK_ORDER, inserted)
        elif connection.execute(UPDATE_WORK_ORDER, {**columns, "b_work_order_id": order.id}).rowcount != 1:
            connection.execute(_INSERT_WORK_ORDER, inserted)
        history = new_history(stored)
        if history:
            connection.execute(_INSERT_HISTORY, history)

    def _stored(self, row: Any, *, with_history: bool, history_rows: Sequence[Any] | None = None) -> StoredWorkOrder:
        """``history_rows``: the work order's history rows when read already (a list's, in one statement)."""
        history: list[HistoryEntry] = []
        if with_history:
            rows = history_rows
            if rows is None:
                rows = self._connection().execute(_HISTORY_OF, {"work_order_id": row.work_order_id}).all()
            history = [
                HistoryEntry(
                    to_utc(h.at),
                    h.actor,
                    h.action,
                    STATE_OF[h.from_state] if h.from_state else None,
                    STATE_OF[h.to_state],
                    h.reason,
                )
                for h in rows
            ]
        next_due = to_utc(row.next_due)
        return StoredWorkOrder(
            order=decode_order(row, history),
            created_at=to_utc(row.created_at),
            updated_at=to_utc(row.updated_at),
            manual_reason=row.manual_reason,
            requested_days=row.requested_days,
            provisional=tuple(p for p in row.provisional.split(",") if p),
            next_due=None if next_due >= FAR_FUTURE else next_due,
            next_sweep_at=None if row.next_sweep_at is None else to_utc(row.next_sweep_at),
            # Without the history loaded, nothing of it is re-saved; new entries are appended.
            saved_history=len(history),
        )

    def list_rows(
        self, query: WorkOrderQuery, *, after: tuple[datetime, str] | None, limit: int, inbox: bool = False
    ) -> tuple[list[Any], int]:
        """The work_orders rows of a list page (``_list_statements``) and the total, counted to COUNT_LIMIT;
        ``inbox``: the rows with ``_INBOX_COLUMNS`` and the case's ``snapshot`` only."""
        states = sorted({s.value for s in query.states})
        now = to_utc(query.now) if query.now is not None else None
        shape = _ListShape(
            unit=bool(query.unit_id),
            case=bool(query.case_id),
            leader_queue=query.leader_queue,
            assisting=bool(query.assisting_unit_id),
            manual=query.manual_only,
            overdue=query.overdue_only and now is not None,
            due_before=query.due_before is not None and now is not None,
            after=after is not None,
            states=len(states),
        )
        params: dict[str, Any] = {"node": self._node, "limit": limit}
        if shape.unit:
            params["unit_id"] = query.unit_id
        if shape.case:
            params["case_id"] = query.case_id
        if shape.assisting:
            params["assisting"] = f"%{_like_escaped(f',{query.assisting_unit_id},')}%"
        if shape.overdue or shape.due_before:
            params["now"] = now
        if shape.due_before:
            params["due_before"] = to_utc(cast(datetime, query.due_before))
        if after is not None:
            params["after_due"], params["after_id"] = after
        params.update({f"in_state_{i}": state for i, state in enumerate(states)})
        statements = _list_statements(shape)
        # Core statements on the session's connection: a read needs none of the ORM session's
        # execution machinery (its events, its bind lookup), which cost as much as SQLite's work.
        connection = self._connection()
        rows = list(connection.execute(statements.inbox if inbox else statements.page, params).all())
        if after is None and len(rows) < limit and len(rows) <= COUNT_LIMIT:
            return rows, len(rows)  # the first page holds them all: that is the count (a case page's list)
        counts = [
            -1 if found > COUNT_LIMIT else int(found or 0)
            for found in connection.execute(statements.count, params).one()
        ]
        return rows, -1 if -1 in counts or sum(counts) > COUNT_LIMIT else sum(counts)

    def list_work_orders(
        self, query: WorkOrderQuery, *, after: tuple[datetime, str] | None, limit: int
    ) -> tuple[list[StoredWorkOrder], int]:
        rows, total = self.list_rows(query, after=after, limit=limit)
        if not (query.with_history and rows):
            return [self._stored(r, with_history=False) for r in rows], total
        histories: dict[str, list[Any]] = {r.work_order_id: [] for r in rows}
        ids = {"work_order_ids": list(histories)}
        for h in self._connection().execute(_HISTORIES_OF, ids):
            histories[h.work_order_id].append(h)
        return [self._stored(r, with_history=True, history_rows=histories[r.work_order_id]) for r in rows], total

    def due_for_sweep(self, now: datetime, *, after_id: str, limit: int) -> list[StoredWorkOrder]:
        query = (
            select(WO)
            .where(WO.c.next_sweep_at.is_not(None), WO.c.next_sweep_at <= to_utc(now), WO.c.work_order_id > after_id)
            .order_by(WO.c.work_order_id)
            .limit(limit)
        )
        if self._postgres:
            # A work order an RPC holds right now is left for the next sweep rather than overwritten
            # with what the sweep read (SQLite's BEGIN IMMEDIATE already serialises the writers).
            query = query.with_for_update(skip_locked=True)
        return [self._stored(r, with_history=False) for r in self.session.execute(query)]

    def provisional_batch(self, *, after_id: str, limit: int) -> list[StoredWorkOrder]:
        query = (
            select(WO)
            # The condition as ix_work_orders_provisional's WHERE says it, so that index serves it.
            .where(text(PROVISIONAL_SQL), WO.c.work_order_id > after_id)
            .order_by(WO.c.work_order_id)
            .limit(limit)
        )
        if self._postgres:
            query = query.with_for_update(skip_locked=True)
        return [self._stored(r, with_history=False) for r in self.session.execute(query)]

    def count_open(self, now: datetime) -> tuple[int, int]:
        open_ = WorkOrderRow.state.in_(OPEN)
        opened = self.session.scalar(select(func.count()).select_from(WorkOrderRow).where(open_)) or 0
        overdue = (
            self.session.scalar(
                select(func.count()).select_from(WorkOrderRow).where(open_, WorkOrderRow.next_due < to_utc(now))
            )
            or 0
        )
        return int(opened), int(overdue)
