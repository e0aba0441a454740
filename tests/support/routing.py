"""Routing's unit of work in memory: the handlers tested without a database (fast, no I/O).

``FakeRoutingStore`` holds what committed units of work wrote; each ``FakeRoutingUnitOfWork`` works
on a copy and hands it back on ``commit``, so a unit left without committing changes nothing, as a
rolled-back transaction would. Events take the case's next version as ``SqlRoutingUnitOfWork.emit``
gives them (a reply travels in its work_order_changed and takes none).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from lianxin.common.v1 import common_pb2

from services.common.timeutil import to_utc
from services.routing.domain import OPEN_STATES, ReplyGiven, State
from services.routing.evaluation import ClosedCase, EvaluationSample, SampleItem
from services.routing.handlers import (
    FAR_FUTURE,
    BatchChange,
    CaseOwner,
    HandedOff,
    RoutingEvent,
    StoredWorkOrder,
    Supervision,
    SupervisionRequested,
    WorkOrderQuery,
)
from services.routing.inbox import InboxRow


@dataclass(frozen=True)
class Published:
    """An event as the outbox holds it: the case, its version at this node, the owner epoch it carries."""

    case_id: str
    version: int
    owner_epoch: int
    event: RoutingEvent


@dataclass
class RoutingTables:
    """Everything routing keeps at one node, as plain collections."""

    work_orders: dict[str, StoredWorkOrder] = field(default_factory=dict)
    versions: dict[str, list[int]] = field(default_factory=dict)  # case -> [version, owner epoch]
    snapshots: dict[str, bytes] = field(default_factory=dict)
    supervisions: dict[str, Supervision] = field(default_factory=dict)
    owners: dict[str, CaseOwner] = field(default_factory=dict)
    repeats: dict[str, set[str]] = field(default_factory=dict)
    merges: dict[str, tuple[str, datetime]] = field(default_factory=dict)  # merged case -> (main case, when)
    outbox: list[Published] = field(default_factory=list)
    commands: list[SupervisionRequested | tuple[bytes, CaseOwner]] = field(default_factory=list)
    samples: dict[str, EvaluationSample] = field(default_factory=dict)
    items: dict[tuple[str, str], SampleItem] = field(default_factory=dict)


class FakeRoutingStore:
    """What the fake units of work committed."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.tables = RoutingTables()
        self.commits = 0

    def unit_of_work(self) -> FakeRoutingUnitOfWork:
        return FakeRoutingUnitOfWork(self)

    def events(self, case_id: str) -> list[Published]:
        return [p for p in self.tables.outbox if p.case_id == case_id]

    def kinds(self, case_id: str) -> list[str]:
        """The events of the case by type name, in outbox order."""
        return [type(p.event).__name__ for p in self.events(case_id)]

    def work_order(self, work_order_id: str) -> StoredWorkOrder:
        return self.tables.work_orders[work_order_id]


class FakeRoutingUnitOfWork:
    """``RoutingUnitOfWork`` over a copy of the store's tables, handed back on ``commit``."""

    def __init__(self, store: FakeRoutingStore) -> None:
        self.store = store
        self.t = copy.deepcopy(store.tables)

    def __enter__(self) -> FakeRoutingUnitOfWork:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def commit(self) -> None:
        self.store.tables = copy.deepcopy(self.t)
        self.store.commits += 1

    # -- work orders -------------------------------------------------------------------------------

    def get(self, work_order_id: str, *, for_update: bool = False) -> StoredWorkOrder | None:
        found = self.t.work_orders.get(work_order_id)
        return copy.deepcopy(found)

    def for_case(self, case_id: str, *, for_update: bool = False) -> StoredWorkOrder | None:
        mine = [
            s for s in self.t.work_orders.values() if s.order.case_id == case_id and s.order.node == self.store.node
        ]
        return copy.deepcopy(max(mine, key=lambda s: s.created_at)) if mine else None

    def save(self, stored: StoredWorkOrder) -> None:
        stored.saved_history = len(stored.order.history)
        self.t.work_orders[stored.order.id] = copy.deepcopy(stored)

    def save_batch(self, changes: Sequence[BatchChange]) -> None:
        for change in changes:
            self.save(change.stored)
            for supervision in change.supervisions:
                self.add_supervision(supervision)
            self.emit(change.stored.order.case_id, change.events)

    def list_work_orders(
        self, query: WorkOrderQuery, *, after: tuple[datetime, str] | None, limit: int
    ) -> tuple[list[StoredWorkOrder], int]:
        found = sorted((s for s in self.t.work_orders.values() if _matches(s, query, self.store.node)), key=_due_and_id)
        total = len(found)
        if after is not None:
            found = [s for s in found if _due_and_id(s) > (to_utc(after[0]), after[1])]
        return copy.deepcopy(found[:limit]), total

    def list_inbox(
        self, query: WorkOrderQuery, *, after: tuple[datetime, str] | None, limit: int
    ) -> tuple[list[InboxRow], int]:
        found, total = self.list_work_orders(query, after=after, limit=limit)
        rows = [
            InboxRow(
                work_order_id=s.order.id,
                case_id=s.order.case_id,
                title=common_pb2.Case.FromString(self.case_snapshot(s.order.case_id)).title,
                category=s.order.category or "",
                state=s.order.state,
                unit_id=s.order.unit_id or "",
                deadlines=dict(s.order.deadlines),
                windows=dict(s.order.windows),
                next_due=s.next_due or FAR_FUTURE,
            )
            for s in found
        ]
        return rows, total

    def due_for_sweep(self, now: datetime, *, after_id: str, limit: int) -> list[StoredWorkOrder]:
        due = [
            s
            for s in self.t.work_orders.values()
            if s.next_sweep_at is not None and s.next_sweep_at <= to_utc(now) and s.order.id > after_id
        ]
        return copy.deepcopy(sorted(due, key=lambda s: s.order.id)[:limit])

    def provisional_batch(self, *, after_id: str, limit: int) -> list[StoredWorkOrder]:
        found = [s for s in self.t.work_orders.values() if s.provisional and s.order.id > after_id]
        return copy.deepcopy(sorted(found, key=lambda s: s.order.id)[:limit])

    def count_open(self, now: datetime) -> tuple[int, int]:
        opened = [s for s in self.t.work_orders.values() if s.order.state in OPEN_STATES]
        overdue = [s for s in opened if s.next_due is not None and s.next_due < to_utc(now)]
        return len(opened), len(overdue)

    # -- the case's rows ---------------------------------------------------------------------------

    def start_case(self, case_id: str, *, version: int, owner_epoch: int) -> None:
        row = self.t.versions.get(case_id)
        if row is None:
            self.t.versions[case_id] = [version, owner_epoch]
        elif owner_epoch >= row[1]:
            row[0], row[1] = max(row[0], version), owner_epoch

    def case_version(self, case_id: str) -> tuple[int, int] | None:
        row = self.t.versions.get(case_id)
        return None if row is None else (row[0], row[1])

    def keep_snapshot(self, case_id: str, snapshot: bytes) -> None:
        self.t.snapshots[case_id] = snapshot

    def case_snapshot(self, case_id: str) -> bytes:
        return self.t.snapshots.get(case_id, b"")

    def record_repeat(self, original_case_id: str, repeat_case_id: str) -> int:
        repeats = self.t.repeats.setdefault(original_case_id, set())
        repeats.add(repeat_case_id)
        return len(repeats)

    def record_merge(self, case_id: str, main_case_id: str, *, at: datetime) -> None:
        self.t.merges[case_id] = (main_case_id, to_utc(at))

    def remove_merge(self, case_id: str) -> None:
        self.t.merges.pop(case_id, None)

    def merged_into(self, main_case_id: str) -> list[str]:
        merged = [(at, case_id) for case_id, (main, at) in self.t.merges.items() if main == main_case_id]
        return [case_id for _, case_id in sorted(merged)]

    def case_owner(self, case_id: str) -> CaseOwner | None:
        return self.t.owners.get(case_id)

    def note_owner(self, owner: CaseOwner) -> None:
        known = self.t.owners.get(owner.case_id)
        if known is None or (owner.owner_epoch, owner.version) > (known.owner_epoch, known.version):
            self.t.owners[owner.case_id] = owner

    # -- supervisions ------------------------------------------------------------------------------

    def add_supervision(self, supervision: Supervision) -> None:
        self.t.supervisions[supervision.supervision_id] = supervision

    def has_supervision(self, supervision_id: str) -> bool:
        return supervision_id in self.t.supervisions

    def list_supervisions(
        self, *, case_id: str, region_prefix: str, after: tuple[datetime, str] | None, limit: int
    ) -> tuple[list[Supervision], int]:
        found = [
            s
            for s in self.t.supervisions.values()
            if (not case_id or s.case_id == case_id) and s.region_code.startswith(region_prefix)
        ]
        found.sort(key=lambda s: (-s.issued_at.timestamp(), s.supervision_id))
        return found[:limit], len(found)

    def send_supervision(self, request: SupervisionRequested) -> None:
        self.t.commands.append(request)

    def forward_command(self, body: bytes, owner: CaseOwner) -> None:
        self.t.commands.append((body, owner))

    # -- events ------------------------------------------------------------------------------------

    def emit(self, case_id: str, events: Sequence[RoutingEvent]) -> None:
        row = self.t.versions.setdefault(case_id, [0, 0])
        for event in events:
            if isinstance(event, ReplyGiven):
                continue
            row[0] += 1
            self.t.outbox.append(Published(case_id, row[0], row[1], event))
            if isinstance(event, HandedOff):
                row[1] = event.new_owner_epoch  # this node is no longer the owner

    # -- 第三方评价 --------------------------------------------------------------------------------

    def closed_between(self, start: datetime, end: datetime) -> list[ClosedCase]:
        out = []
        for s in self.t.work_orders.values():
            closes = [h.at for h in s.order.history if h.action == "close"]
            if s.order.state is not State.CLOSED or s.order.node != self.store.node or not closes:
                continue
            if to_utc(start) <= max(closes) < to_utc(end):
                o = s.order
                out.append(
                    ClosedCase(o.case_id, o.id, o.unit_id or "", max(closes), o.category or "", o.region_code or "")
                )
        return out

    def evaluation_sample(self, month: str) -> EvaluationSample | None:
        return copy.deepcopy(self.t.samples.get(month))

    def save_evaluation_sample(self, sample: EvaluationSample, items: Sequence[SampleItem]) -> None:
        self.t.samples[sample.month] = copy.deepcopy(sample)
        self.t.items.update({(i.month, i.case_id): copy.deepcopy(i) for i in items})

    def sample_items(
        self, month: str, *, unrated_only: bool, after: tuple[str, int] | None, limit: int
    ) -> tuple[list[SampleItem], int]:
        found = sorted(
            (i for (m, _), i in self.t.items.items() if m == month and not (unrated_only and i.rating)),
            key=lambda i: (i.unit_id, i.rank),
        )
        total = len(found)
        if after is not None:
            found = [i for i in found if (i.unit_id, i.rank) > after]
        return copy.deepcopy(found[:limit]), total

    def sample_item(self, month: str, case_id: str) -> SampleItem | None:
        return copy.deepcopy(self.t.items.get((month, case_id)))

    def save_rating(self, item: SampleItem) -> None:
        self.t.items[(item.month, item.case_id)] = copy.deepcopy(item)

    def rated_by_unit(self, month: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for (m, _), item in self.t.items.items():
            if m == month and item.rating:
                counts[item.unit_id] = counts.get(item.unit_id, 0) + 1
        return counts

    def sampled_texts(self, items: Sequence[SampleItem]) -> dict[str, tuple[str, str, str]]:
        out = {}
        for item in items:
            case = common_pb2.Case.FromString(self.case_snapshot(item.case_id))
            stored = self.t.work_orders.get(item.work_order_id)
            reply = stored.order.reply_text if stored is not None else ""
            out[item.case_id] = (case.title, case.body, reply or "")
        return out


def _due_and_id(stored: StoredWorkOrder) -> tuple[datetime, str]:
    return (stored.next_due or FAR_FUTURE, stored.order.id)


def _matches(stored: StoredWorkOrder, query: WorkOrderQuery, node: str) -> bool:
    order, now = stored.order, query.now
    due = stored.next_due or FAR_FUTURE
    is_open = order.state in OPEN_STATES
    checks = (
        order.node == node,
        not query.unit_id or order.unit_id == query.unit_id,
        not query.case_id or order.case_id == query.case_id,
        not query.states or order.state in query.states,
        not query.manual_only or stored.manual_queue,
        not query.leader_queue or order.awaiting_instruction,
        not query.assisting_unit_id
        or (query.assisting_unit_id in order.assists and order.assists[query.assisting_unit_id].pending),
        not (query.overdue_only and now is not None) or (is_open and due < to_utc(now)),
        query.due_before is None or now is None or (is_open and to_utc(now) <= due <= to_utc(query.due_before)),
    )
    return all(checks)
