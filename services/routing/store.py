"""Routing's SQLAlchemy adapter: work orders, history, supervisions, case versions and the events they emit."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, cast

from lianxin.common.v1 import common_pb2
from lianxin.events.v1 import events_pb2
from sqlalchemy import (
    Integer,
    Select,
    Table,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    text,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from services.common.db import COUNT_LIMIT, bounded_count
from services.common.events import WORK_ORDER_EVENTS, envelope, to_bus_event
from services.common.outbox import append_event, append_events
from services.common.regions import RegionTree, Tier
from services.common.service import BusEvent
from services.common.timeutil import to_timestamp, to_utc
from services.routing.domain import (
    OPEN_STATES,
    Assist,
    DeadlineStageReached,
    HistoryEntry,
    Instruction,
    ReplyGiven,
    State,
    WorkOrder,
    WorkOrderChanged,
    WorkOrderCreated,
)
from services.routing.domain.timelimits import DeadlineKind
from services.routing.evaluation import (
    CaseSampled,
    ClosedCase,
    EvaluationSample,
    SampleItem,
    SamplingRule,
    ThirdPartyRated,
    UnitCount,
)
from services.routing.handlers import (
    FAR_FUTURE,
    BatchChange,
    CaseMergedInto,
    CaseOwner,
    HandedOff,
    RatingApplied,
    RoutingEvent,
    StoredWorkOrder,
    Supervision,
    SupervisionRecorded,
    SupervisionRequested,
    WorkOrderQuery,
    registering_node_to_tell,
)
from services.routing.models import (
    PROVISIONAL_SQL,
    CaseMergeRow,
    CaseOwnerRow,
    CaseSnapshotRow,
    CaseVersionRow,
    EvaluationItemRow,
    EvaluationSampleRow,
    RepeatRow,
    SupervisionRow,
    WorkOrderHistoryRow,
    WorkOrderRow,
    outbox,
)

_OPEN = sorted(s.value for s in OPEN_STATES)
_WO = cast(Table, WorkOrderRow.__table__)
_HISTORY = cast(Table, WorkOrderHistoryRow.__table__)
_SUPERVISION = cast(Table, SupervisionRow.__table__)
_CASE_VERSION = cast(Table, CaseVersionRow.__table__)
# Bulk statements (executemany): the dicts carry the column values, ``b_*`` keys the row to touch.
_UPDATE_WORK_ORDER = update(_WO).where(_WO.c.work_order_id == bindparam("b_work_order_id"))
_UPDATE_CASE_VERSION = update(_CASE_VERSION).where(_CASE_VERSION.c.case_id == bindparam("b_case_id"))
_IN_CHUNK = 5000  # ids per IN (...) list: far below SQLite's and PostgreSQL's parameter limits


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else to_utc(value).isoformat()


def encode_order(order: WorkOrder) -> str:
    """The aggregate without its history (kept in its own table) as JSON."""
    return json.dumps(
        {
            "tier": order.tier.value,
            "category": order.category,
            "region_code": order.region_code,
            "unit_id": order.unit_id,
            "handling_kind": order.handling_kind.value,
            "deadlines": {k: _iso(v) for k, v in order.deadlines.items()},
            "windows": {k: _iso(v) for k, v in order.windows.items()},
            "clock_starts": {k: _iso(v) for k, v in order.clock_starts.items()},
            "pauses": [[_iso(a), _iso(b)] for a, b in order.pauses],
            "paused_since": _iso(order.paused_since),
            "ext": [order.extension_requested, order.extension_pending, order.extension_days],
            "objection_barred": order.objection_barred,
            "reopen_count": order.reopen_count,
            "reviewed": order.reviewed,
            "reply": [order.reply_text, list(order.reply_attachments), _iso(order.replied_at)],
            "merged_into": order.merged_into,
            "merged_from": order.merged_from.value if order.merged_from else None,
            "leader": [
                order.leader_class,
                order.leader_unit,
                None
                if order.instruction is None
                else [
                    order.instruction.leader_name,
                    order.instruction.text,
                    _iso(order.instruction.at),
                    order.instruction.recorded_by,
                ],
            ],
            "assists": {
                u: [_iso(a.requested_at), _iso(a.due), _iso(a.answered_at), a.answer, a.late]
                for u, a in order.assists.items()
            },
            "transferred_to": order.transferred_to,
            "fired": sorted([k, s] for k, s in order.fired),
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


def decode_order(row: Any, history: list[HistoryEntry]) -> WorkOrder:
    """``row`` is a ``WorkOrderRow`` or a Core row of the ``work_orders`` table (same attribute names)."""
    d: dict[str, Any] = json.loads(row.data)
    requested, pending, ext_days = d["ext"]
    reply_text, attachments, replied_at = d["reply"]
    return WorkOrder(
        id=row.work_order_id,
        case_id=row.case_id,
        node=row.node,
        tier=Tier(d["tier"]),
        category=d["category"],
        region_code=d["region_code"],
        state=State(row.state),
        unit_id=d["unit_id"],
        handling_kind=DeadlineKind(d["handling_kind"]),
        deadlines={k: datetime.fromisoformat(v) for k, v in d["deadlines"].items()},
        windows={k: datetime.fromisoformat(v) for k, v in d["windows"].items()},
        clock_starts={k: datetime.fromisoformat(v) for k, v in d["clock_starts"].items()},
        pauses=[(datetime.fromisoformat(a), datetime.fromisoformat(b)) for a, b in d["pauses"]],
        paused_since=_dt(d["paused_since"]),
        extension_requested=requested,
        extension_pending=pending,
        extension_days=ext_days,
        objection_barred=d["objection_barred"],
        reopen_count=d["reopen_count"],
        reviewed=d["reviewed"],
        reply_text=reply_text,
        reply_attachments=tuple(attachments),
        replied_at=_dt(replied_at),
        merged_into=d["merged_into"],
        merged_from=State(d["merged_from"]) if d.get("merged_from") else None,
        **_leader_fields(d.get("leader")),
        assists={
            u: Assist(u, datetime.fromisoformat(r), datetime.fromisoformat(due), _dt(ans), text, late)
            for u, (r, due, ans, text, late) in d.get("assists", {}).items()
        },
        transferred_to=d["transferred_to"],
        fired={(k, s) for k, s in d["fired"]},
        history=history,
        version=row.version,
    )


def _leader_fields(raw: Any) -> dict[str, Any]:
    if not raw:
        return {}
    class_id, unit, given = raw
    instruction = None
    if given:
        name, text, at, by = given
        instruction = Instruction(name, text, datetime.fromisoformat(at), by)
    return {"leader_class": class_id, "leader_unit": unit, "instruction": instruction}


def _state_enum(state: State | None) -> common_pb2.CaseState.ValueType:
    return common_pb2.CaseState.Value(f"CASE_STATE_{state.value}") if state else common_pb2.CASE_STATE_UNSPECIFIED


def _deadlines(items: Sequence[tuple[str, datetime]]) -> list[common_pb2.Deadline]:
    return [common_pb2.Deadline(kind=k, due_at=to_timestamp(v)) for k, v in items]


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


@functools.lru_cache(maxsize=256)
def _list_statements(shape: _ListShape) -> tuple[tuple[Any, ...], Any]:
    """The count statements and the page statement of a work order list, with bound parameters.

    Built once per shape: building the inbox's union of seven ranges took the node ~30 ms of
    Python per request, far more than SQLite took to run it (issue 17, the console's inbox).
    """
    conditions: list[Any] = [_WO.c.node == bindparam("node")]
    if shape.unit:
        conditions.append(_WO.c.unit_id == bindparam("unit_id"))
    if shape.case:
        conditions.append(_WO.c.case_id == bindparam("case_id"))
    if shape.leader_queue:
        conditions.append(_WO.c.leader_queue != "")
    if shape.assisting:
        conditions.append(_WO.c.assisting.like(bindparam("assisting"), escape="/"))
    if shape.manual:
        conditions.append(_WO.c.manual_queue == 1)
    if shape.overdue:
        conditions += [_WO.c.next_due < bindparam("now"), _WO.c.state.in_(_OPEN)]
    if shape.due_before:
        conditions += [
            _WO.c.next_due >= bindparam("now"),
            _WO.c.next_due <= bindparam("due_before"),
            _WO.c.state.in_(_OPEN),
        ]
    order = (_WO.c.next_due, _WO.c.work_order_id)
    limit = bindparam("limit", type_=Integer)
    after = (
        [tuple_(*order) > tuple_(bindparam("after_due", type_=_WO.c.next_due.type), bindparam("after_id"))]
        if shape.after
        else []
    )

    def counted(query: Any) -> Any:
        # At most COUNT_LIMIT + 1 read (bounded_count's statement); the ORDER BY names the index.
        return select(func.count()).select_from(query.limit(COUNT_LIMIT + 1).subquery())

    if not shape.states or shape.case:
        # One case's work orders (its own index), or every state (a count stopped at COUNT_LIMIT).
        in_states = [_WO.c.state.in_([bindparam(f"in_state_{i}") for i in range(shape.states)])] if shape.states else []
        count = counted(select(_WO.c.work_order_id).where(*conditions, *in_states))
        page = select(_WO).where(*conditions, *in_states, *after).order_by(*order).limit(limit)
        return (count,), page
    # An inbox (a unit's, or the node's): one ordered range of ix_work_orders_unit_state or
    # ix_work_orders_state_due per state, each at most a page, merged, and counted the same way.
    # In one ordered walk by due date the planner read past every closed work order whenever
    # fewer matched than a page (issue 20), and with the states in one IN PostgreSQL's generic
    # plan read the whole work order table (issue 17, the console's inbox).
    per_state = [_WO.c.state == bindparam(f"in_state_{i}") for i in range(shape.states)]
    counts = tuple(
        counted(select(_WO.c.work_order_id).where(*conditions, state).order_by(*order)) for state in per_state
    )
    parts = [
        select(select(_WO).where(*conditions, state, *after).order_by(*order).limit(limit).subquery())
        for state in per_state
    ]
    merged = union_all(*parts).subquery()
    return counts, select(merged).order_by(merged.c.next_due, merged.c.work_order_id).limit(limit)


class SqlRoutingUnitOfWork:
    def __init__(
        self,
        factory: sessionmaker[Session] | None = None,
        *,
        session: Session | None = None,
        node: str,
        regions: RegionTree | None = None,
    ) -> None:
        """Either opens its own transaction from ``factory`` or joins ``session`` (event consumers,
        whose inbox row must commit in the same transaction).

        With ``regions``, work order events of a case registered at a node that is neither this node
        nor an ancestor also go to that node as a command (``_handling_command``)."""
        self._factory = factory
        self._joined = session
        self._node = node
        self._regions = regions
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

    # -- work orders -------------------------------------------------------------------------------

    def get(self, work_order_id: str, *, for_update: bool = False) -> StoredWorkOrder | None:
        query = select(WorkOrderRow).where(WorkOrderRow.work_order_id == work_order_id)
        if for_update:
            query = _locking(query)
        row = self.session.scalar(query)
        return self._stored(row, with_history=True) if row else None

    def for_case(self, case_id: str, *, for_update: bool = False) -> StoredWorkOrder | None:
        query = (
            select(WorkOrderRow)
            .where(WorkOrderRow.case_id == case_id, WorkOrderRow.node == self._node)
            .order_by(WorkOrderRow.created_at.desc())
            .limit(1)
        )
        if for_update:
            query = _locking(query)
        row = self.session.scalar(query)
        return self._stored(row, with_history=True) if row else None

    def save(self, stored: StoredWorkOrder) -> None:
        order = stored.order
        row = self.session.get(WorkOrderRow, order.id)
        if row is None:
            row = WorkOrderRow(work_order_id=order.id, created_at=to_utc(stored.created_at))
            self.session.add(row)
        for column, value in _columns(stored).items():
            setattr(row, column, value)
        for values in _new_history(stored):
            self.session.add(WorkOrderHistoryRow(**values))
        self.session.flush()

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
            updates.append({**_columns(change.stored), "b_work_order_id": change.stored.order.id})
            history += _new_history(change.stored)
            supervisions += [_supervision_values(s) for s in change.supervisions]
        _bulk_update(self.session, _UPDATE_WORK_ORDER, updates)
        _bulk_insert(self.session, _HISTORY, history)
        _bulk_insert(self.session, _SUPERVISION, supervisions)
        self.emit_many([(c.stored.order.case_id, c.events) for c in changes])

    def _stored(self, row: Any, *, with_history: bool) -> StoredWorkOrder:
        history: list[HistoryEntry] = []
        if with_history:
            rows = self.session.scalars(
                select(WorkOrderHistoryRow)
                .where(WorkOrderHistoryRow.work_order_id == row.work_order_id)
                .order_by(WorkOrderHistoryRow.id)
            ).all()
            history = [
                HistoryEntry(
                    to_utc(h.at),
                    h.actor,
                    h.action,
                    State(h.from_state) if h.from_state else None,
                    State(h.to_state),
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

    def list_work_orders(
        self, query: WorkOrderQuery, *, after: tuple[datetime, str] | None, limit: int
    ) -> tuple[list[StoredWorkOrder], int]:
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
        counts_sql, rows_sql = _list_statements(shape)
        counts = [
            -1 if found > COUNT_LIMIT else int(found)
            for found in (self.session.scalar(sql, params) or 0 for sql in counts_sql)
        ]
        total = -1 if -1 in counts or sum(counts) > COUNT_LIMIT else sum(counts)
        rows: Any = self.session.execute(rows_sql, params).all()
        return [self._stored(r, with_history=False) for r in rows], total

    def due_for_sweep(self, now: datetime, *, after_id: str, limit: int) -> list[StoredWorkOrder]:
        query = (
            select(_WO)
            .where(
                _WO.c.next_sweep_at.is_not(None),
                _WO.c.next_sweep_at <= to_utc(now),
                _WO.c.work_order_id > after_id,
            )
            .order_by(_WO.c.work_order_id)
            .limit(limit)
        )
        if self._postgres:
            # A work order an RPC holds right now is left for the next sweep rather than overwritten
            # with what the sweep read (SQLite's BEGIN IMMEDIATE already serialises the writers).
            query = query.with_for_update(skip_locked=True)
        return [self._stored(r, with_history=False) for r in self.session.execute(query)]

    def provisional_batch(self, *, after_id: str, limit: int) -> list[StoredWorkOrder]:
        query = (
            select(_WO)
            # The condition as ix_work_orders_provisional's WHERE says it, so that index serves it.
            .where(text(PROVISIONAL_SQL), _WO.c.work_order_id > after_id)
            .order_by(_WO.c.work_order_id)
            .limit(limit)
        )
        if self._postgres:
            query = query.with_for_update(skip_locked=True)
        return [self._stored(r, with_history=False) for r in self.session.execute(query)]

    @property
    def _postgres(self) -> bool:
        return self.session.get_bind().dialect.name == "postgresql"

    def count_open(self, now: datetime) -> tuple[int, int]:
        open_ = WorkOrderRow.state.in_(_OPEN)
        opened = self.session.scalar(select(func.count()).select_from(WorkOrderRow).where(open_)) or 0
        overdue = (
            self.session.scalar(
                select(func.count()).select_from(WorkOrderRow).where(open_, WorkOrderRow.next_due < to_utc(now))
            )
            or 0
        )
        return int(opened), int(overdue)

    # -- cases, repeats, supervisions ------------------------------------------------------------

    def start_case(self, case_id: str, *, version: int, owner_epoch: int) -> None:
        row = self.session.get(CaseVersionRow, case_id)
        if row is None:
            self.session.add(CaseVersionRow(case_id=case_id, version=version, owner_epoch=owner_epoch))
        elif owner_epoch >= row.owner_epoch:
            # The case came back (hand-off down again): continue from the newer of the two versions.
            row.version = max(row.version, version)
            row.owner_epoch = owner_epoch
        self.session.flush()

    def case_version(self, case_id: str) -> tuple[int, int] | None:
        row = self.session.get(CaseVersionRow, case_id)
        return None if row is None else (row.version, row.owner_epoch)

    def keep_snapshot(self, case_id: str, snapshot: bytes) -> None:
        self.session.merge(CaseSnapshotRow(case_id=case_id, snapshot=snapshot))
        self.session.flush()

    def case_snapshot(self, case_id: str) -> bytes:
        row = self.session.get(CaseSnapshotRow, case_id)
        return b"" if row is None else bytes(row.snapshot)

    def record_repeat(self, original_case_id: str, repeat_case_id: str) -> int:
        dialect = self.session.get_bind().dialect.name
        insert: Any = postgresql.insert(RepeatRow) if dialect == "postgresql" else sqlite.insert(RepeatRow)
        self.session.execute(
            insert.values(original_case_id=original_case_id, repeat_case_id=repeat_case_id).on_conflict_do_nothing()
        )
        count = self.session.scalar(
            select(func.count()).select_from(RepeatRow).where(RepeatRow.original_case_id == original_case_id)
        )
        return int(count or 0)

    def record_merge(self, case_id: str, main_case_id: str, *, at: datetime) -> None:
        self.session.merge(CaseMergeRow(case_id=case_id, main_case_id=main_case_id, merged_at=to_utc(at)))
        self.session.flush()

    def remove_merge(self, case_id: str) -> None:
        row = self.session.get(CaseMergeRow, case_id)
        if row is not None:
            self.session.delete(row)
            self.session.flush()

    def merged_into(self, main_case_id: str) -> list[str]:
        rows = self.session.scalars(
            select(CaseMergeRow.case_id)
            .where(CaseMergeRow.main_case_id == main_case_id)
            .order_by(CaseMergeRow.merged_at, CaseMergeRow.case_id)
        )
        return list(rows)

    def add_supervision(self, supervision: Supervision) -> None:
        self.session.add(SupervisionRow(**_supervision_values(supervision)))
        self.session.flush()

    def has_supervision(self, supervision_id: str) -> bool:
        return self.session.get(SupervisionRow, supervision_id) is not None

    def send_supervision(self, request: SupervisionRequested) -> None:
        s = request.supervision
        command = events_pb2.Command(
            # One command per supervision: a retried outbox publish is the same command.
            command_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"lianxin:supervise:{s.supervision_id}")),
            case_id=s.case_id,
            target_node=request.target_node,
            issuing_node=self._node,
            owner_epoch_seen=request.owner_epoch_seen,
            issued_at=to_timestamp(s.issued_at),
            supervise=events_pb2.Command.Supervise(
                supervision_id=s.supervision_id,
                level=s.level,
                demand=s.demand,
                due_at=to_timestamp(s.due_at),
                actor=s.by_actor,
            ),
        )
        self._put_command(command)

    def forward_command(self, body: bytes, owner: CaseOwner) -> None:
        command = events_pb2.Command()
        command.ParseFromString(body)
        # A new id per leg: the exchange of each node delivers a command id once, and a case handed
        # back (上报 after 交办) may take the command to a node it was delivered at before.
        command.command_id = str(
            uuid.uuid5(
                uuid.NAMESPACE_URL, f"lianxin:forward:{command.command_id}:{owner.owner_node}:{owner.owner_epoch}"
            )
        )
        command.target_node = owner.owner_node
        command.owner_epoch_seen = owner.owner_epoch
        self._put_command(command)

    def _put_command(self, command: events_pb2.Command) -> None:
        """On the outbox as routing's ``command``: exchange carries it toward ``target_node``."""
        body = command.SerializeToString()
        append_event(
            self.session,
            outbox,
            BusEvent(event_id=command.command_id, source="routing", event_type="command", body=body),
            command.case_id,
        )

    def case_owner(self, case_id: str) -> CaseOwner | None:
        row = self.session.get(CaseOwnerRow, case_id)
        return None if row is None else CaseOwner(case_id, row.owner_node, row.owner_epoch, row.version)

    def note_owner(self, owner: CaseOwner) -> None:
        row = self.session.get(CaseOwnerRow, owner.case_id, with_for_update=True)
        if row is None:
            self.session.add(
                CaseOwnerRow(
                    case_id=owner.case_id,
                    owner_node=owner.owner_node,
                    owner_epoch=owner.owner_epoch,
                    version=owner.version,
                )
            )
        elif (owner.owner_epoch, owner.version) > (row.owner_epoch, row.version):
            row.owner_node, row.owner_epoch, row.version = owner.owner_node, owner.owner_epoch, owner.version
        self.session.flush()

    def list_supervisions(
        self, *, case_id: str, region_prefix: str, after: tuple[datetime, str] | None, limit: int
    ) -> tuple[list[Supervision], int]:
        conditions: list[Any] = []
        if case_id:
            conditions.append(SupervisionRow.case_id == case_id)
        if region_prefix:
            conditions.append(SupervisionRow.region_code.startswith(region_prefix))
        total = bounded_count(self.session, select(SupervisionRow.supervision_id).where(*conditions))
        if after is not None:
            at, last = after
            conditions.append(
                or_(
                    SupervisionRow.issued_at < at,
                    and_(SupervisionRow.issued_at == at, SupervisionRow.supervision_id > last),
                )
            )
        rows = self.session.scalars(
            select(SupervisionRow)
            .where(*conditions)
            .order_by(SupervisionRow.issued_at.desc(), SupervisionRow.supervision_id)
            .limit(limit)
        ).all()
        return [
            Supervision(
                supervision_id=r.supervision_id,
                case_id=r.case_id,
                work_order_id=r.work_order_id,
                level=r.level,
                by_node=r.by_node,
                by_actor=r.by_actor,
                demand=r.demand,
                due_at=to_utc(r.due_at),
                issued_at=to_utc(r.issued_at),
                region_code=r.region_code,
                outcome=r.outcome,
                state=r.state,
            )
            for r in rows
        ], int(total)

    # -- 第三方评价 ------------------------------------------------------------------------------

    def closed_between(self, start: datetime, end: datetime) -> list[ClosedCase]:
        h = WorkOrderHistoryRow
        closed_at = func.max(h.at).label("closed_at")
        query = (
            select(
                WorkOrderRow.case_id,
                WorkOrderRow.work_order_id,
                WorkOrderRow.unit_id,
                WorkOrderRow.category,
                WorkOrderRow.region_code,
                closed_at,
            )
            .join(h, h.work_order_id == WorkOrderRow.work_order_id)
            .where(WorkOrderRow.state == State.CLOSED.value, WorkOrderRow.node == self._node, h.action == "close")
            .group_by(
                WorkOrderRow.case_id,
                WorkOrderRow.work_order_id,
                WorkOrderRow.unit_id,
                WorkOrderRow.category,
                WorkOrderRow.region_code,
            )
            .having(and_(closed_at >= to_utc(start), closed_at < to_utc(end)))
        )
        return [
            ClosedCase(r.case_id, r.work_order_id, r.unit_id, to_utc(r.closed_at), r.category, r.region_code)
            for r in self.session.execute(query)
        ]

    def evaluation_sample(self, month: str) -> EvaluationSample | None:
        row = self.session.get(EvaluationSampleRow, month)
        if row is None:
            return None
        units = [UnitCount(u, closed, sampled) for u, closed, sampled in json.loads(row.units)]
        return EvaluationSample(
            row.month,
            row.node,
            row.seed,
            SamplingRule(row.percent, row.minimum),
            to_utc(row.drawn_at),
            row.drawn_by,
            units,
        )

    def save_evaluation_sample(self, sample: EvaluationSample, items: Sequence[SampleItem]) -> None:
        self.session.add(
            EvaluationSampleRow(
                month=sample.month,
                node=sample.node,
                seed=sample.seed,
                percent=sample.rule.percent,
                minimum=sample.rule.minimum,
                drawn_at=to_utc(sample.drawn_at),
                drawn_by=sample.drawn_by,
                units=json.dumps([[u.unit_id, u.closed, u.sampled] for u in sample.units]),
            )
        )
        self.session.add_all(
            EvaluationItemRow(
                month=i.month,
                case_id=i.case_id,
                work_order_id=i.work_order_id,
                unit_id=i.unit_id,
                rank=i.rank,
                closed_at=to_utc(i.closed_at),
                category=i.category,
                region_code=i.region_code,
                rating="",
                comment="",
                rated_by="",
            )
            for i in items
        )
        self.session.flush()

    def sample_items(
        self, month: str, *, unrated_only: bool, after: tuple[str, int] | None, limit: int
    ) -> tuple[list[SampleItem], int]:
        E = EvaluationItemRow
        conditions: list[Any] = [E.month == month]
        if unrated_only:
            conditions.append(E.rating == "")
        total = bounded_count(self.session, select(E.case_id).where(*conditions))
        if after is not None:
            unit, rank = after
            conditions.append(or_(E.unit_id > unit, and_(E.unit_id == unit, E.rank > rank)))
        rows = self.session.scalars(select(E).where(*conditions).order_by(E.unit_id, E.rank).limit(limit)).all()
        return [_sample_item(r) for r in rows], int(total)

    def sample_item(self, month: str, case_id: str) -> SampleItem | None:
        row = self.session.get(EvaluationItemRow, (month, case_id), with_for_update=True)
        return None if row is None else _sample_item(row)

    def save_rating(self, item: SampleItem) -> None:
        row = self.session.get(EvaluationItemRow, (item.month, item.case_id))
        assert row is not None
        row.rating, row.comment, row.rated_by = item.rating, item.comment, item.rated_by
        row.rated_at = None if item.rated_at is None else to_utc(item.rated_at)
        self.session.flush()

    def rated_by_unit(self, month: str) -> dict[str, int]:
        E = EvaluationItemRow
        rows = self.session.execute(
            select(E.unit_id, func.count()).where(E.month == month, E.rating != "").group_by(E.unit_id)
        )
        return {unit: int(n) for unit, n in rows}

    def sampled_texts(self, items: Sequence[SampleItem]) -> dict[str, tuple[str, str, str]]:
        out: dict[str, tuple[str, str, str]] = {}
        for item in items:
            case = common_pb2.Case()
            case.ParseFromString(self.case_snapshot(item.case_id))
            stored = self.get(item.work_order_id)
            reply = stored.order.reply_text if stored is not None else ""
            out[item.case_id] = (case.title, case.body, reply or "")
        return out

    # -- events ----------------------------------------------------------------------------------

    def emit(self, case_id: str, events: Sequence[RoutingEvent]) -> None:
        """Each event takes the case's next version at this node, in the same transaction (outbox)."""
        if not events:
            return
        row = self.session.get(CaseVersionRow, case_id, with_for_update=True)
        if row is None:
            row = CaseVersionRow(case_id=case_id, version=0, owner_epoch=0)
            self.session.add(row)
        tell = self._registering_node_to_tell(case_id)
        for event in events:
            translated = _payload(event)
            if translated is None:
                continue
            field, payload, at = translated
            row.version += 1
            env = envelope(
                payload_field=field,
                payload=payload,
                case_id=case_id,
                version=row.version,
                owner_node=self._node,
                owner_epoch=row.owner_epoch,
                origin_node=self._node,
                origin_service="routing",
                occurred_at=at,
            )
            for bus_event in _outgoing(env, field, tell):
                append_event(self.session, outbox, bus_event, case_id)
            if isinstance(event, HandedOff):
                row.owner_epoch = event.new_owner_epoch  # this node is no longer the owner
        self.session.flush()

    def emit_many(self, items: Sequence[tuple[str, Sequence[RoutingEvent]]]) -> None:
        """``emit`` for many cases at once: one versions read, bulk version writes, one outbox append."""
        case_ids = sorted({case_id for case_id, events in items if events})
        if not case_ids:
            return
        self.session.flush()
        known: dict[str, list[int]] = {}
        for start in range(0, len(case_ids), _IN_CHUNK):
            query = (
                select(_CASE_VERSION.c.case_id, _CASE_VERSION.c.version, _CASE_VERSION.c.owner_epoch)
                .where(_CASE_VERSION.c.case_id.in_(case_ids[start : start + _IN_CHUNK]))
                .order_by(_CASE_VERSION.c.case_id)  # row locks in case order, as every bulk writer takes them
                .with_for_update()
            )
            known.update({r.case_id: [r.version, r.owner_epoch] for r in self.session.execute(query)})
        existing = set(known)
        out: list[tuple[BusEvent, str | None]] = []
        for case_id, events in items:
            counter = known.setdefault(case_id, [0, 0])
            tell = self._registering_node_to_tell(case_id) if events else None
            for event in events:
                translated = _payload(event)
                if translated is None:
                    continue
                field, payload, at = translated
                counter[0] += 1
                env = envelope(
                    payload_field=field,
                    payload=payload,
                    case_id=case_id,
                    version=counter[0],
                    owner_node=self._node,
                    owner_epoch=counter[1],
                    origin_node=self._node,
                    origin_service="routing",
                    occurred_at=at,
                )
                out.extend((bus_event, case_id) for bus_event in _outgoing(env, field, tell))
                if isinstance(event, HandedOff):
                    counter[1] = event.new_owner_epoch  # this node is no longer the owner
        fresh = [{"case_id": c, "version": v, "owner_epoch": e} for c, (v, e) in known.items() if c not in existing]
        changed = [{"b_case_id": c, "version": v, "owner_epoch": e} for c, (v, e) in known.items() if c in existing]
        _bulk_insert(self.session, _CASE_VERSION, fresh)
        _bulk_update(self.session, _UPDATE_CASE_VERSION, changed)
        append_events(self.session, outbox, out)

    def _registering_node_to_tell(self, case_id: str) -> str | None:
        if self._regions is None:
            return None
        return registering_node_to_tell(case_id, self._node, self._regions)


def _outgoing(env: events_pb2.EventEnvelope, field: str, tell: str | None) -> list[BusEvent]:
    """The event for ``env``, and after it, when the registering node ``tell`` follows this kind of
    event, the same event as a command for that node."""
    bus_event = to_bus_event(env)
    if tell is None or field not in WORK_ORDER_EVENTS:
        return [bus_event]
    return [bus_event, _handling_command(env, bus_event.body, tell)]


def _handling_command(env: events_pb2.EventEnvelope, body: bytes, target: str) -> BusEvent:
    """The work order event ``env`` (serialized as ``body``) as a ``Command.HandlingUpdate`` for ``target``.

    The command id derives from the event id, so a redelivery is one command however often the
    relay publishes it; routing's outbox publishes it as type "command" and exchange carries it to
    ``target`` (docs/exchange.md "Commands").
    """
    command_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"lianxin:handling:{env.event_id}"))
    command = events_pb2.Command(
        command_id=command_id,
        case_id=env.case_id,
        target_node=target,
        issuing_node=env.origin_node,
        owner_epoch_seen=env.owner_epoch,  # exchange never retargets a handling update
        issued_at=env.occurred_at,
        handling=events_pb2.Command.HandlingUpdate(envelope=body),
    )
    command.trace_context.update(env.trace_context)
    return BusEvent(event_id=command_id, source="routing", event_type="command", body=command.SerializeToString())


def _sample_item(row: EvaluationItemRow) -> SampleItem:
    return SampleItem(
        month=row.month,
        case_id=row.case_id,
        work_order_id=row.work_order_id,
        unit_id=row.unit_id,
        closed_at=to_utc(row.closed_at),
        rank=row.rank,
        category=row.category,
        region_code=row.region_code,
        rating=row.rating,
        comment=row.comment,
        rated_by=row.rated_by,
        rated_at=None if row.rated_at is None else to_utc(row.rated_at),
    )


def _columns(stored: StoredWorkOrder) -> dict[str, Any]:
    """The ``work_orders`` columns of a stored work order, except its key and ``created_at``."""
    order = stored.order
    return {
        "case_id": order.case_id,
        "node": order.node,
        "unit_id": order.unit_id or "",
        "category": order.category or "",
        "region_code": order.region_code or "",
        "state": order.state.value,
        "manual_queue": int(stored.manual_queue),
        "manual_reason": stored.manual_reason,
        "hand_off_to": order.transferred_to or "",
        "data": encode_order(order),
        "requested_days": stored.requested_days,
        "provisional": ",".join(stored.provisional),
        "assisting": _assisting(order),
        "leader_queue": (order.leader_class or "") if order.awaiting_instruction else "",
        # SQLite keeps wall-clock text: every stored instant is UTC so comparisons hold on both backends.
        "next_due": to_utc(stored.next_due or FAR_FUTURE),
        "next_sweep_at": None if stored.next_sweep_at is None else to_utc(stored.next_sweep_at),
        "version": order.version,
        "updated_at": to_utc(stored.updated_at),
    }


def _assisting(order: WorkOrder) -> str:
    pending = sorted(u for u, a in order.assists.items() if a.pending)
    return f",{','.join(pending)}," if pending else ""


def _locking(query: Select[WorkOrderRow]) -> Select[WorkOrderRow]:
    """``FOR UPDATE``, and the row as committed when the lock is granted (not a copy this session read before)."""
    return query.with_for_update().execution_options(populate_existing=True)


def _new_history(stored: StoredWorkOrder) -> list[dict[str, Any]]:
    """History rows not stored yet; marks them stored."""
    order = stored.order
    rows = [
        {
            "work_order_id": order.id,
            "at": to_utc(entry.at),
            "actor": entry.actor,
            "action": entry.action,
            "from_state": entry.from_state.value if entry.from_state else "",
            "to_state": entry.to_state.value,
            "reason": entry.reason,
        }
        for entry in order.history[stored.saved_history :]
    ]
    stored.saved_history = len(order.history)
    return rows


def _supervision_values(s: Supervision) -> dict[str, Any]:
    return {
        "supervision_id": s.supervision_id,
        "case_id": s.case_id,
        "work_order_id": s.work_order_id,
        "level": s.level,
        "by_node": s.by_node,
        "by_actor": s.by_actor,
        "demand": s.demand,
        "due_at": to_utc(s.due_at),
        "issued_at": to_utc(s.issued_at),
        "region_code": s.region_code,
        "outcome": s.outcome,
        "state": s.state,
    }


def _bulk_insert(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """INSERT many rows as one executemany (psycopg 3 pipelines it; array-unnest forms measured slower:
    psycopg dumps big arrays in Python)."""
    if rows:
        session.execute(insert(table), rows)


def _bulk_update(session: Session, statement: Any, rows: list[dict[str, Any]]) -> None:
    """UPDATE many rows as one executemany; each dict holds the new values and the ``b_*`` key."""
    if rows:
        session.execute(statement, rows)


def _payload(event: RoutingEvent) -> tuple[str, Any, datetime] | None:
    if isinstance(event, WorkOrderCreated):
        return (
            "work_order_created",
            events_pb2.WorkOrderCreated(
                work_order_id=event.work_order_id,
                unit_id=event.unit_id or "",
                node=event.node,
                category=event.category or "",
                region_code=event.region_code or "",
                deadlines=_deadlines(event.deadlines),
                manual_queue=event.manual_queue,
            ),
            event.at,
        )
    if isinstance(event, WorkOrderChanged):
        return (
            "work_order_changed",
            events_pb2.WorkOrderChanged(
                work_order_id=event.work_order_id,
                unit_id=event.unit_id or "",
                from_state=_state_enum(event.from_state),
                to_state=_state_enum(event.to_state),
                action=str(event.action),
                actor=event.actor,
                reason=event.reason,
                deadlines=_deadlines(event.deadlines),
                reply_text=event.reply_text,
                main_case_id=event.main_case_id,
                assisting_unit_id=event.assisting_unit_id,
                leader_name=event.leader_name,
            ),
            event.at,
        )
    if isinstance(event, DeadlineStageReached):
        return (
            "deadline_warning",
            events_pb2.DeadlineWarning(
                work_order_id=event.work_order_id,
                deadline_kind=event.kind,
                due_at=to_timestamp(event.deadline),
                stage=event.stage.value,
                unit_ids=list(event.unit_ids),
            ),
            event.at,
        )
    if isinstance(event, SupervisionRecorded):
        s = event.supervision
        return (
            "supervision_issued",
            events_pb2.SupervisionIssued(
                supervision_id=s.supervision_id,
                level=s.level,
                by_node=s.by_node,
                demand=s.demand,
                due_at=to_timestamp(s.due_at),
            ),
            s.issued_at,
        )
    if isinstance(event, HandedOff):
        case = common_pb2.Case()
        case.ParseFromString(event.case_snapshot)
        case.ClearField("complainant")  # never personal data in an event (DESIGN §5)
        if not case.case_id:
            # No snapshot kept (placed before snapshots were): what the work order knows.
            case.case_id, case.region_code, case.category = event.case_id, event.region_code, event.category
        return (
            "case_handed_off",
            events_pb2.CaseHandedOff(
                from_node=event.from_node,
                to_node=event.to_node,
                new_owner_epoch=event.new_owner_epoch,
                kind=event.kind,
                reason=event.reason,
                case=case,
                from_work_order_id=event.from_work_order_id,
            ),
            event.at,
        )
    if isinstance(event, RatingApplied):
        return (
            "case_evaluated",
            events_pb2.CaseEvaluated(
                satisfaction=common_pb2.Satisfaction.Value(f"SATISFACTION_{event.satisfaction}"),
                comment=event.comment,
                work_order_id=event.work_order_id,
                unit_id=event.unit_id,
            ),
            event.at,
        )
    if isinstance(event, CaseMergedInto):
        return "case_merged", events_pb2.CaseMerged(into_case_id=event.into_case_id, reason=event.reason), event.at
    if isinstance(event, CaseSampled):
        return (
            "case_sampled",
            events_pb2.CaseSampled(
                month=event.month, seed=event.seed, work_order_id=event.work_order_id, unit_id=event.unit_id
            ),
            event.at,
        )
    if isinstance(event, ThirdPartyRated):
        return (
            "third_party_rated",
            events_pb2.ThirdPartyRated(
                month=event.month,
                rating=common_pb2.Satisfaction.Value(f"SATISFACTION_{event.rating}"),
                comment=event.comment,
                work_order_id=event.work_order_id,
                unit_id=event.unit_id,
                evaluator=event.evaluator,
            ),
            event.at,
        )
    if isinstance(event, ReplyGiven):
        return None  # carried by work_order_changed(reply); the text stays with the work order
    return None
