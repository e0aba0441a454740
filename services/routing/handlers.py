"""Routing's use cases as plain functions: placing a registered case, the work-order actions, the sweep.

No gRPC, SQLAlchemy or broker here (cosmicpython): the unit of work (``RoutingUnitOfWork``) loads and
saves work orders and turns the domain events returned by ``services.routing.workorder`` into outbox
rows, with the case's next version. The store implements it; tests may fake it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from services.common.calendar import OfficialYear
from services.common.errors import (
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    StaleOwner,
)
from services.common.ids import registering_node
from services.common.logs import mask_name
from services.common.personal_text import mask
from services.common.regions import RegionTree
from services.common.timeutil import china_date, to_utc
from services.routing.evaluation import (
    CaseSampled,
    ClosedCase,
    EvaluationSample,
    SampleItem,
    ThirdPartyRated,
    UnitCount,
    check_month,
    check_month_begun,
    check_rating,
    check_rule,
    check_seed,
    new_sample,
)
from services.routing.jurisdiction import (
    AssignUnit,
    DispatchCatalogue,
    HandOff,
    ManualQueue,
    decide,
)
from services.routing.leader import LeaderClasses, check_instruction
from services.routing.merging import check_merge, check_merge_request, check_unmerge
from services.routing.provisional import ProvisionalCalendar
from services.routing.timelimits import CATEGORIES, DeadlineKind, TimeRules, supervision_at, warning_at
from services.routing.workorder import (
    ESCALATE_UP,
    MERGE_IN,
    MERGE_OUT,
    OPEN_STATES,
    TRANSITIONS,
    Action,
    ArbitrationOutcome,
    DeadlineStageReached,
    Stage,
    State,
    WorkOrder,
    WorkOrderChanged,
    WorkOrderCreated,
    WorkOrderEvent,
    sweep,
)

log = logging.getLogger(__name__)
SYSTEM = "system"
FAR_FUTURE = datetime(9999, 12, 31, tzinfo=UTC)  # sort key for "no pending deadline"


@dataclass(frozen=True)
class RegisteredCase:
    """What routing needs to know of a case arriving at this node (registered here or handed down)."""

    case_id: str
    region_code: str
    category: str
    registering_node: str
    owner_epoch: int
    version: int
    channel_hotline: bool = False
    flags: tuple[str, ...] = ()
    repeat_of: str = ""
    case_snapshot: bytes = b""  # the serialized common.v1.Case (no personal data), for hand-offs
    text: str = ""  # title and the start of the text: a leader class's keywords are looked for here


@dataclass(frozen=True)
class HandedOff:
    """Ownership of the case moves to another node (交办 down, 上报 up): exchange carries it there."""

    case_id: str
    from_node: str
    to_node: str
    new_owner_epoch: int
    reason: str
    from_work_order_id: str
    case_snapshot: bytes
    at: datetime
    kind: str = "assign_down"  # "assign_down" (交办) or "escalate_up" (上报)
    # What the adapter puts in the event's case when no snapshot was kept (cases placed before snapshots).
    region_code: str = ""
    category: str = ""


@dataclass(frozen=True)
class Supervision:
    """A chase or supervision directive (催办/督办): who, when, what is demanded, by when, outcome."""

    supervision_id: str
    case_id: str
    work_order_id: str
    level: str  # "chase" | "supervise" | "listed"
    by_node: str
    by_actor: str
    demand: str
    due_at: datetime
    issued_at: datetime
    region_code: str = ""
    outcome: str = ""
    state: str = "open"


@dataclass(frozen=True)
class SupervisionRecorded:
    """Event: a supervision was recorded (proto ``SupervisionIssued``)."""

    supervision: Supervision


@dataclass(frozen=True)
class SupervisionRequested:
    """A supervision issued here for a case another node owns: sent to ``target_node`` as a command."""

    supervision: Supervision
    target_node: str
    owner_epoch_seen: int


@dataclass(frozen=True)
class CaseOwner:
    """Who owns a case this node does not handle, as the subtree's replicas last said (``case_owners``)."""

    case_id: str
    owner_node: str
    owner_epoch: int
    version: int


@dataclass(frozen=True)
class RatingApplied:
    """Event (proto ``CaseEvaluated``): the citizen's rating, registered at another node, applied here.

    The owner announces it so that its own warehouse and every tier above it count the rating;
    only the registering node's intake had it before."""

    case_id: str
    satisfaction: str  # "SATISFIED" | "BASICALLY_SATISFIED" | "UNSATISFIED"
    comment: str
    work_order_id: str
    unit_id: str
    at: datetime


@dataclass(frozen=True)
class CaseMergedInto:
    """Event (proto ``CaseMerged``): the case was merged into ``into_case_id`` (并单)."""

    case_id: str
    into_case_id: str
    reason: str
    at: datetime


RoutingEvent = (
    WorkOrderEvent | HandedOff | SupervisionRecorded | RatingApplied | CaseMergedInto | CaseSampled | ThirdPartyRated
)
LEVELS = ("chase", "supervise", "listed")


@dataclass
class StoredWorkOrder:
    """A work order with what the adapter keeps beside the aggregate."""

    order: WorkOrder
    created_at: datetime
    updated_at: datetime
    manual_reason: str = ""
    requested_days: int = 0
    provisional: tuple[str, ...] = ()
    next_due: datetime | None = None
    next_sweep_at: datetime | None = None
    saved_history: int = 0  # history entries already stored (the rest are appended on save)

    @property
    def manual_queue(self) -> bool:
        return bool(self.manual_reason) and self.order.state is State.REGISTERED


@dataclass
class BatchChange:
    """One swept work order: its new state, the supervisions it caused and the events to emit."""

    stored: StoredWorkOrder
    events: list[RoutingEvent] = dataclasses.field(default_factory=list)
    supervisions: list[Supervision] = dataclasses.field(default_factory=list)


@dataclass(frozen=True)
class WorkOrderQuery:
    unit_id: str = ""
    case_id: str = ""
    states: tuple[State, ...] = ()
    overdue_only: bool = False
    due_before: datetime | None = None
    now: datetime | None = None
    manual_only: bool = False
    assisting_unit_id: str = ""  # 协办: work orders that wait for this unit's answer
    leader_queue: bool = False  # 领导批转: work orders that wait for a leader's instruction


class RoutingUnitOfWork(Protocol):
    def get(self, work_order_id: str, *, for_update: bool = False) -> StoredWorkOrder | None: ...

    def for_case(self, case_id: str, *, for_update: bool = False) -> StoredWorkOrder | None: ...

    def save(self, stored: StoredWorkOrder) -> None: ...

    def start_case(self, case_id: str, *, version: int, owner_epoch: int) -> None: ...

    def case_version(self, case_id: str) -> tuple[int, int] | None: ...

    def keep_snapshot(self, case_id: str, snapshot: bytes) -> None: ...

    def case_snapshot(self, case_id: str) -> bytes: ...

    def emit(self, case_id: str, events: Sequence[RoutingEvent]) -> None: ...

    def add_supervision(self, supervision: Supervision) -> None: ...

    def has_supervision(self, supervision_id: str) -> bool: ...

    def send_supervision(self, request: SupervisionRequested) -> None:
        """Put the request on the outbox as a ``Command.Supervise`` for its target (exchange carries it)."""

    def forward_command(self, body: bytes, owner: CaseOwner) -> None:
        """Put the serialized ``Command`` on the outbox again, addressed to ``owner`` (``handed_on_to``)."""

    def case_owner(self, case_id: str) -> CaseOwner | None: ...

    def note_owner(self, owner: CaseOwner) -> None:
        """Keep ``owner`` when its (epoch, version) is above the known one."""

    def record_repeat(self, original_case_id: str, repeat_case_id: str) -> int: ...

    def record_merge(self, case_id: str, main_case_id: str, *, at: datetime) -> None: ...

    def remove_merge(self, case_id: str) -> None: ...

    def merged_into(self, main_case_id: str) -> list[str]:
        """Case ids merged into ``main_case_id`` here and not taken out again, oldest first."""

    def list_work_orders(
        self, query: WorkOrderQuery, *, after: tuple[datetime, str] | None, limit: int
    ) -> tuple[list[StoredWorkOrder], int]: ...

    def list_supervisions(
        self, *, case_id: str, region_prefix: str, after: tuple[datetime, str] | None, limit: int
    ) -> tuple[list[Supervision], int]: ...

    def due_for_sweep(self, now: datetime, *, after_id: str, limit: int) -> list[StoredWorkOrder]: ...

    def provisional_batch(self, *, after_id: str, limit: int) -> list[StoredWorkOrder]: ...

    def count_open(self, now: datetime) -> tuple[int, int]: ...

    def save_batch(self, changes: Sequence[BatchChange]) -> None: ...

    # 第三方评价
    def closed_between(self, start: datetime, end: datetime) -> list[ClosedCase]:
        """Work orders of this node now CLOSED whose last close falls in [start, end)."""

    def evaluation_sample(self, month: str) -> EvaluationSample | None: ...

    def save_evaluation_sample(self, sample: EvaluationSample, items: Sequence[SampleItem]) -> None: ...

    def sample_items(
        self, month: str, *, unrated_only: bool, after: tuple[str, int] | None, limit: int
    ) -> tuple[list[SampleItem], int]:
        """A page of the month's sample by (unit, rank), and how many match in all."""

    def sample_item(self, month: str, case_id: str) -> SampleItem | None:
        """The sampled case, its row locked for the rating."""

    def save_rating(self, item: SampleItem) -> None: ...

    def rated_by_unit(self, month: str) -> dict[str, int]: ...

    def sampled_texts(self, items: Sequence[SampleItem]) -> dict[str, tuple[str, str, str]]:
        """Title, text and reply of each sampled case (as this node holds them, unmasked)."""

    def commit(self) -> None: ...


UnitOfWorkFactory = Callable[[], AbstractContextManager[RoutingUnitOfWork]]


@dataclass
class Routing:
    """Everything the use cases need about this node: its place in the tree, catalogue and time rules."""

    node: str
    regions: RegionTree
    catalogue: DispatchCatalogue
    rules: TimeRules
    calendar: ProvisionalCalendar
    new_id: Callable[[], str]
    leader_classes: LeaderClasses = dataclasses.field(default_factory=LeaderClasses)
    # The day statistical months start on (LIANXIN_STATS_MONTH_START_DAY, as the warehouse): 第三方评价.
    month_start_day: int = 1

    @property
    def parent(self) -> str:
        return self.regions.parent(self.node) or self.node


def work_order_id_for(case_id: str, node: str) -> str:
    """Deterministic, so a redelivered CaseRegistered can never create a second work order."""
    return f"WO-{case_id}@{node}"


def registering_node_to_tell(case_id: str, node: str, regions: RegionTree) -> str | None:
    """The node that registered ``case_id``, when this node's handling of it would not reach it otherwise.

    A case id names the node that registered it (``ids.format_case_id``: ``511102-20261122-000123``)
    and that node's intake holds the citizen's tracking code. Replicas flow up only, so a registering
    node that is this node or one of its ancestors follows the handling from them; any other (after
    a 上报 from it, or a transfer into another subtree) is sent each work order event as a command.
    """
    registrar = registering_node(case_id)
    if registrar not in regions or node not in regions or regions.contains(registrar, node):
        return None
    return registrar


# -- bookkeeping shared by every use case ------------------------------------------------------------


def _refresh(stored: StoredWorkOrder, routing: Routing, at: datetime, *, before: tuple[str, ...]) -> None:
    """Derived columns (next due, next sweep boundary, provisional kinds) and the provisional note."""
    order = stored.order
    stored.updated_at = at
    running = {**order.deadlines, **order.windows}
    stored.provisional = tuple(sorted(k for k, v in running.items() if routing.calendar.is_provisional(v)))
    new = [k for k in stored.provisional if k not in before]
    if new and order.history:
        # The history says which dates are provisional, so nobody mistakes them for official ones.
        years = sorted({china_date(running[k]).year for k in new})
        note = "; ".join(f"{k} due {running[k].date().isoformat()}" for k in new)
        last = order.history[-1]
        extra = f"[provisional deadline: {note} counted Mon-Fri, no official calendar for {', '.join(map(str, years))}]"
        order.history[-1] = dataclasses.replace(last, reason=f"{last.reason} {extra}".strip())
    if order.state not in OPEN_STATES:
        stored.next_due = None
        stored.next_sweep_at = None
        return
    stored.next_due = min(order.deadlines.values()) if order.deadlines else None
    stored.next_sweep_at = None if order.paused_since is not None else next_sweep_boundary(order, routing.rules)


def next_sweep_boundary(order: WorkOrder, rules: TimeRules) -> datetime | None:
    """The earliest warning/chase/supervision boundary not yet fired: the sweep need not look before it."""
    best: datetime | None = None
    for kind, deadline in order.deadlines.items():
        candidates = {
            Stage.WARNING: warning_at(deadline, order.limit_of(kind, rules.policy), rules.policy, rules.calendar),
            Stage.CHASE: deadline,
            Stage.SUPERVISION: supervision_at(deadline, rules.policy, rules.calendar),
        }
        for stage, boundary in candidates.items():
            if boundary is None or (kind, stage.value) in order.fired:
                continue
            if best is None or boundary < best:
                best = boundary
    return best


def _persist(
    uow: RoutingUnitOfWork, stored: StoredWorkOrder, routing: Routing, events: Sequence[RoutingEvent], at: datetime
) -> None:
    before = stored.provisional
    _refresh(stored, routing, at, before=before)
    uow.save(stored)
    uow.emit(stored.order.case_id, events)
    _follow_main(uow, stored, routing, events, at)


def _follow_main(
    uow: RoutingUnitOfWork, stored: StoredWorkOrder, routing: Routing, events: Sequence[RoutingEvent], at: datetime
) -> None:
    """并单: every change of a main case reaches the cases merged into it (their citizens follow it)."""
    changes = [
        e
        for e in events
        if isinstance(e, WorkOrderChanged)
        and e.case_id == stored.order.case_id
        and e.action not in (MERGE_IN, MERGE_OUT)
    ]
    if not changes or stored.order.state is State.MERGED:
        return
    for case_id in uow.merged_into(stored.order.case_id):
        follower = uow.get(work_order_id_for(case_id, routing.node), for_update=True)
        if follower is None:
            continue
        followed: list[RoutingEvent] = [f for change in changes for f in follower.order.follow_main(change)]
        if followed:
            _refresh(follower, routing, at, before=follower.provisional)
            uow.save(follower)
            uow.emit(case_id, followed)


# -- placing a case ----------------------------------------------------------------------------------


def handling_kind_for(case: RegisteredCase) -> DeadlineKind:
    """12345 calls run on the hotline class limits; everything else is a petition settled in 60 days."""
    if not case.channel_hotline:
        return DeadlineKind.SETTLE
    if "hotline_emergency" in case.flags:
        return DeadlineKind.HOTLINE_EMERGENCY
    if "hotline_enquiry" in case.flags:
        return DeadlineKind.HOTLINE_ENQUIRY
    return DeadlineKind.HOTLINE_COMPLAINT


def decide_escalated(case: RegisteredCase, routing: Routing) -> AssignUnit | ManualQueue:
    """上报 arriving from a child: a unit of this node by category; never handed back down toward the region."""
    if not case.category:
        return ManualQueue("the escalated case has no category: a clerk must classify it")
    if case.category not in CATEGORIES:
        return ManualQueue(f"unknown category {case.category!r}")
    unit = routing.catalogue.unit_for(case.category, case.region_code)
    if unit is None:
        return ManualQueue(f"no unit for category {case.category} in {routing.catalogue.label}")
    return AssignUnit(unit)


def on_case_arrived(
    case: RegisteredCase, uow: RoutingUnitOfWork, routing: Routing, *, now: datetime, escalated: bool = False
) -> StoredWorkOrder:
    """属地管理、分级负责: assign to this node's unit, hand down to the child node (交办), or queue for a clerk.

    Used for a registration at this node and for a hand-off arriving from the parent alike. An
    escalation (上报) from a child (``escalated``) is placed with a unit of this node by category.
    """
    wo_id = work_order_id_for(case.case_id, routing.node)
    existing = uow.get(wo_id, for_update=True)  # an escalation back rewrites it (see _changing)
    if existing is not None:
        if escalated and existing.order.state is State.TRANSFERRED:
            return _escalated_back(existing, case, uow, routing, now=to_utc(now))
        return existing
    now = to_utc(now)
    uow.start_case(case.case_id, version=case.version, owner_epoch=case.owner_epoch)
    if case.case_snapshot:
        uow.keep_snapshot(case.case_id, case.case_snapshot)  # an escalation (上报) sends it on
    tier = routing.regions.get(routing.node).tier
    order, events = WorkOrder.register(
        id=wo_id,
        case_id=case.case_id,
        node=routing.node,
        tier=tier,
        at=now,
        actor=SYSTEM,
        rules=routing.rules,
        category=case.category or None,
        region_code=case.region_code or None,
        handling_kind=handling_kind_for(case),
    )
    all_events: list[RoutingEvent] = list(events)
    stored = StoredWorkOrder(order=order, created_at=now, updated_at=now)
    decision = (
        decide_escalated(case, routing)
        if escalated
        else decide(case.region_code, case.category, routing.node, routing.regions, routing.catalogue)
    )
    if isinstance(decision, HandOff):
        reason = f"交办 to {decision.to_node}: the matter's region {case.region_code} lies there"
        all_events += order.transfer(to_node=decision.to_node, at=now, actor=SYSTEM, reason=reason)
        all_events.append(
            HandedOff(
                case_id=case.case_id,
                from_node=routing.node,
                to_node=decision.to_node,
                new_owner_epoch=case.owner_epoch + 1,
                reason=reason,
                from_work_order_id=wo_id,
                case_snapshot=case.case_snapshot,
                at=now,
            )
        )
    elif (held := routing.leader_classes.match(case.category, case.text)) is not None:
        # 领导批转: a matter of a leader's classes waits for the instruction before anyone handles it.
        unit = decision.unit_id if isinstance(decision, AssignUnit) else None
        note = f"领导批转: class {held.id} ({held.name}) waits for the instruction of the {held.leader}"
        all_events += order.hold_for_leader(
            class_id=held.id, note=note, unit_id=unit, at=now, actor=SYSTEM, rules=routing.rules
        )
    elif isinstance(decision, AssignUnit):
        placed = "上报 from a lower tier" if escalated else "placed by the dispatch catalogue"
        all_events += order.accept(at=now, actor=SYSTEM, rules=routing.rules, reason=f"受理: {placed}")
        all_events += order.assign(
            unit_id=decision.unit_id,
            at=now,
            actor=SYSTEM,
            rules=routing.rules,
            reason=f"派单目录 {routing.catalogue.label}",
        )
    else:
        stored.manual_reason = decision.reason
    # The creation event says where the work order ended up: the unit, or the manual queue.
    created = events[0]
    assert isinstance(created, WorkOrderCreated)
    all_events[0] = dataclasses.replace(
        created,
        unit_id=decision.unit_id if isinstance(decision, AssignUnit) and not order.awaiting_instruction else None,
        manual_queue=stored.manual_queue,
    )
    _persist(uow, stored, routing, all_events, now)
    if case.repeat_of:
        _count_repeat(case, uow, routing, now=now)
    return stored


def _escalated_back(
    stored: StoredWorkOrder, case: RegisteredCase, uow: RoutingUnitOfWork, routing: Routing, *, now: datetime
) -> StoredWorkOrder:
    """上报 of a case this node once handed down (交办): its own transferred work order takes it back.

    Only under a newer epoch than this node knows, so a redelivered or older hand-off changes nothing.
    """
    known = uow.case_version(case.case_id)
    if known is not None and case.owner_epoch <= known[1]:
        return stored
    uow.start_case(case.case_id, version=case.version, owner_epoch=case.owner_epoch)
    if case.case_snapshot:
        uow.keep_snapshot(case.case_id, case.case_snapshot)
    order = stored.order
    events: list[RoutingEvent] = list(
        order.take_back(at=now, actor=SYSTEM, rules=routing.rules, reason="上报: the case came back up")
    )
    decision = decide_escalated(case, routing)
    if isinstance(decision, AssignUnit):
        events += order.accept(at=now, actor=SYSTEM, rules=routing.rules, reason="受理: 上报 from a lower tier")
        events += order.assign(
            unit_id=decision.unit_id,
            at=now,
            actor=SYSTEM,
            rules=routing.rules,
            reason=f"派单目录 {routing.catalogue.label}",
        )
        stored.manual_reason = ""
    else:
        stored.manual_reason = decision.reason
    _persist(uow, stored, routing, events, now)
    return stored


def _count_repeat(case: RegisteredCase, uow: RoutingUnitOfWork, routing: Routing, *, now: datetime) -> None:
    """Two unresolved repeats of a case escalate to supervision by the tier above (DESIGN §3)."""
    original = uow.for_case(case.repeat_of)
    if original is not None and original.order.state not in OPEN_STATES:
        return  # resolved here: a repeat of a closed matter is a new matter, not an escalation
    count = uow.record_repeat(case.repeat_of, case.case_id)
    if count != 2:
        return
    # The supervision is about the original case when this node knows it, else about the repeat.
    about = case.repeat_of if uow.case_version(case.repeat_of) is not None else case.case_id
    supervision = Supervision(
        supervision_id=routing.new_id(),
        case_id=about,
        work_order_id=original.order.id if original is not None else "",
        level="supervise",
        by_node=routing.parent,
        by_actor=SYSTEM,
        demand=f"two unresolved repeats of case {case.repeat_of} (latest {case.case_id}): settle it and report",
        due_at=supervision_at(now, routing.rules.policy, routing.rules.calendar),
        issued_at=now,
        region_code=case.region_code,
    )
    uow.add_supervision(supervision)
    uow.emit(about, [SupervisionRecorded(supervision)])


# -- the work-order actions --------------------------------------------------------------------------


def _load(uow: RoutingUnitOfWork, work_order_id: str, expected_version: int) -> StoredWorkOrder:
    if not work_order_id:
        raise InvalidArgument("work_order_id", "must be set")
    stored = uow.get(work_order_id, for_update=True)
    if stored is None:
        raise NotFound("work order", work_order_id)
    if expected_version and expected_version != stored.order.version:
        raise Conflict(
            f"work order {work_order_id} is at version {stored.order.version}, not {expected_version}: re-read it"
        )
    return stored


def _actor(actor: str) -> str:
    text = (actor or "").strip()
    if not text:
        raise InvalidArgument("actor", "the operator id is required")
    return text


def act(
    work_order_id: str,
    step: Callable[[StoredWorkOrder, datetime, str], list[WorkOrderEvent]],
    *,
    actor: str,
    expected_version: int,
    uow_factory: UnitOfWorkFactory,
    routing: Routing,
    now: datetime,
) -> StoredWorkOrder:
    """Load, apply one domain action, save and emit, in one transaction; domain errors change nothing."""
    who = _actor(actor)
    now = to_utc(now)
    with uow_factory() as uow:
        stored = _load(uow, work_order_id, expected_version)
        _refuse_if_handed_off(uow, stored)
        events = step(stored, now, who)
        _persist(uow, stored, routing, events, now)
        uow.commit()
    return stored


def _refuse_if_handed_off(uow: RoutingUnitOfWork, stored: StoredWorkOrder) -> None:
    """A work order whose case went to another node (交办/上报) is no longer the owner's: writes are stale."""
    order = stored.order
    if order.state is not State.TRANSFERRED or not order.transferred_to:
        return
    known = uow.case_version(order.case_id)
    current = known[1] if known is not None else 0
    # Routing's hand-offs raise the epoch by one, so this node held the one below the new owner's.
    raise StaleOwner(
        f"work order {order.id} (case {order.case_id}, now owned by {order.transferred_to})",
        max(current - 1, 0),
        current,
    )


def escalate(
    *,
    case_id: str,
    actor: str,
    expected_version: int,
    reason: str,
    uow_factory: UnitOfWorkFactory,
    routing: Routing,
    now: datetime,
) -> HandedOff:
    """上报: this node gives the case to its parent; its work order closes as TRANSFERRED (escalate_up).

    The ``case_handed_off`` (kind ``escalate_up``, epoch + 1) travels up with the rest of the case's
    events; the parent's routing places it with one of its units. Afterwards this node's work order
    refuses writes (``StaleOwner``).
    """
    who = _actor(actor)
    if not (case_id or "").strip():
        raise InvalidArgument("case_id", "must be set")
    why = (reason or "").strip()
    if not why:
        raise InvalidArgument("reason", "why the case is escalated (上报理由) is required")
    parent = routing.regions.parent(routing.node)
    if parent is None:
        raise FailedPrecondition(f"node {routing.node} has no tier above to escalate to")
    return _hand_off(
        case_id=case_id,
        actor=who,
        expected_version=expected_version,
        to_node=parent,
        text=f"上报 to {parent}: {why}",
        kind=ESCALATE_UP,
        uow_factory=uow_factory,
        routing=routing,
        now=now,
    )


def hand_down(
    *,
    case_id: str,
    actor: str,
    expected_version: int,
    to_node: str,
    reason: str,
    uow_factory: UnitOfWorkFactory,
    routing: Routing,
    now: datetime,
) -> HandedOff:
    """人工交办: a clerk hands a case this node owns to a node of its subtree (any tier below).

    The same hand-off as the automatic one by region (kind ``assign_down``, epoch + 1); the exchange
    carries it down hop by hop and the receiving node's routing places it by its own catalogue, or in
    its manual queue when the matter's region is not its own. Going up is 上报 (``escalate``).
    """
    who = _actor(actor)
    if not (case_id or "").strip():
        raise InvalidArgument("case_id", "must be set")
    target = (to_node or "").strip()
    if target not in routing.regions:
        raise InvalidArgument("node", f"{target!r} is not a known region code")
    if target == routing.node or not routing.regions.contains(routing.node, target):
        raise InvalidArgument(
            "node", f"{target} is not below node {routing.node}: hand down only; use EscalateCase (上报) to go up"
        )
    why = (reason or "").strip()
    if not why:
        raise InvalidArgument("reason", "the instruction for the node below (交办意见) is required")
    return _hand_off(
        case_id=case_id,
        actor=who,
        expected_version=expected_version,
        to_node=target,
        text=f"交办 to {target}: {why}",
        kind="assign_down",
        uow_factory=uow_factory,
        routing=routing,
        now=now,
    )


def _hand_off(
    *,
    case_id: str,
    actor: str,
    expected_version: int,
    to_node: str,
    text: str,
    kind: str,
    uow_factory: UnitOfWorkFactory,
    routing: Routing,
    now: datetime,
) -> HandedOff:
    """Close this node's work order as TRANSFERRED and emit the hand-off that moves ownership (epoch + 1)."""
    now = to_utc(now)
    with uow_factory() as uow:
        stored = uow.get(work_order_id_for(case_id, routing.node), for_update=True)
        if stored is None:
            raise NotFound("work order of case", case_id)
        _refuse_if_handed_off(uow, stored)
        followers = uow.merged_into(case_id)
        if followers:
            # Their citizens follow this case's handling here; a hand-off would leave them behind.
            raise FailedPrecondition(
                f"cases {', '.join(followers)} are merged into case {case_id}: undo the merge (UnmergeCase) first",
                stored.order.state,
            )
        known = uow.case_version(case_id)
        version, epoch = known if known is not None else (0, 0)
        if expected_version and expected_version != version:
            raise Conflict(f"case {case_id} is at version {version}, not {expected_version}: re-read it")
        order = stored.order
        events: list[RoutingEvent] = list(
            order.escalate_up(to_node=to_node, at=now, actor=actor, reason=text)
            if kind == ESCALATE_UP
            else order.transfer(to_node=to_node, at=now, actor=actor, reason=text)
        )
        handed = HandedOff(
            case_id=case_id,
            from_node=routing.node,
            to_node=to_node,
            new_owner_epoch=epoch + 1,
            reason=text,
            from_work_order_id=order.id,
            case_snapshot=uow.case_snapshot(case_id),
            at=now,
            kind=kind,
            region_code=order.region_code or "",
            category=order.category or "",
        )
        events.append(handed)  # last: the events before it still carry this node's epoch
        stored.manual_reason = ""
        _persist(uow, stored, routing, events, now)
        uow.commit()
    return handed


@dataclass(frozen=True)
class MergeResult:
    main: StoredWorkOrder
    merged: list[StoredWorkOrder]


def merge_cases(
    *,
    main_case_id: str,
    case_ids: Sequence[str],
    actor: str,
    expected_version: int,
    reason: str,
    acting_unit: str,
    uow_factory: UnitOfWorkFactory,
    routing: Routing,
    now: datetime,
) -> MergeResult:
    """并单: ``case_ids`` become MERGED into ``main_case_id``, in one transaction (all or nothing).

    Each merged case emits its ``work_order_changed`` (merge) and ``case_merged``; the main case's
    history names them (``merge_in``). From then on every change of the main case is followed by
    each merged case (``main:<action>``), so their citizens see the main case's progress and reply.
    """
    who = _actor(actor)
    main_id, others = check_merge_request(main_case_id, case_ids)
    why = (reason or "").strip()
    if not why:
        raise InvalidArgument("reason", "why the cases are one matter (并单理由) is required")
    now = to_utc(now)
    with uow_factory() as uow:
        # Rows locked in id order, as every writer of several work orders takes them.
        ids = sorted({main_id, *others})
        loaded = {c: uow.get(work_order_id_for(c, routing.node), for_update=True) for c in ids}
        orders = {c: (s.order if s is not None else None) for c, s in loaded.items()}
        check_merge(main_id, others, main=orders[main_id], merged=orders, node=routing.node, acting_unit=acting_unit)
        main = loaded[main_id]
        assert main is not None
        if expected_version and expected_version != main.order.version:
            raise Conflict(
                f"work order {main.order.id} is at version {main.order.version}, not {expected_version}: re-read it"
            )
        merged: list[StoredWorkOrder] = []
        for case_id in others:
            stored = loaded[case_id]
            assert stored is not None
            events: list[RoutingEvent] = list(stored.order.merge(into_case_id=main_id, at=now, actor=who, reason=why))
            events.append(CaseMergedInto(case_id, main_id, why, now))
            uow.record_merge(case_id, main_id, at=now)
            _persist(uow, stored, routing, events, now)
            merged.append(stored)
        _persist(uow, main, routing, main.order.merged_in(others, at=now, actor=who, reason=why), now)
        uow.commit()
    return MergeResult(main, merged)


def unmerge_case(
    *,
    case_id: str,
    actor: str,
    expected_version: int,
    reason: str,
    acting_unit: str,
    uow_factory: UnitOfWorkFactory,
    routing: Routing,
    now: datetime,
) -> StoredWorkOrder:
    """The merge of ``case_id`` is undone before the main case's reply: it is handled on its own again."""
    who = _actor(actor)
    wanted = (case_id or "").strip()
    if not wanted:
        raise InvalidArgument("case_id", "the merged case is required")
    why = (reason or "").strip()
    if not why:
        raise InvalidArgument("reason", "why the merge is undone is required")
    now = to_utc(now)
    with uow_factory() as uow:
        stored = uow.get(work_order_id_for(wanted, routing.node), for_update=True)
        main_id = stored.order.merged_into if stored is not None else None
        main = uow.get(work_order_id_for(main_id, routing.node), for_update=True) if main_id else None
        check_unmerge(
            stored.order if stored is not None else None,
            wanted,
            main=main.order if main is not None else None,
            node=routing.node,
            acting_unit=acting_unit,
        )
        assert stored is not None
        if expected_version and expected_version != stored.order.version:
            raise Conflict(
                f"work order {stored.order.id} is at version {stored.order.version}, not {expected_version}: re-read it"
            )
        events = stored.order.unmerge(at=now, actor=who, reason=why)
        uow.remove_merge(wanted)
        _persist(uow, stored, routing, events, now)
        if main is not None:
            note = main.order.merge_noted(
                MERGE_OUT, f"并单撤销: {wanted} handled on its own again ({why})", at=now, actor=who
            )
            _persist(uow, main, routing, note, now)
        uow.commit()
    return stored


def _lead_only(stored: StoredWorkOrder, acting_unit: str, what: str) -> None:
    """主办/协办: only the lead unit (the work order's unit) does ``what``; the office may act for it."""
    if acting_unit and acting_unit != stored.order.unit_id:
        raise PermissionDenied(
            f"only the lead unit {stored.order.unit_id or '(none)'} {what}; {acting_unit} is not the lead of "
            f"work order {stored.order.id}"
        )


def request_assist(
    stored: StoredWorkOrder,
    at: datetime,
    actor: str,
    routing: Routing,
    *,
    unit_ids: Sequence[str],
    request: str,
    acting_unit: str,
) -> list[WorkOrderEvent]:
    """The lead unit (or the office) asks assisting units of this node for their part (协办)."""
    _lead_only(stored, acting_unit, "asks assisting units")
    for i, unit in enumerate(unit_ids):
        if unit.strip() and unit.strip() not in routing.catalogue.units:
            raise InvalidArgument(f"unit_ids[{i}]", f"{unit!r} is not a unit of node {routing.node}")
    return list(stored.order.request_assist(unit_ids, at=at, actor=actor, rules=routing.rules, request=request))


def answer_assist(
    stored: StoredWorkOrder, at: datetime, actor: str, routing: Routing, *, unit_id: str, text: str, acting_unit: str
) -> list[WorkOrderEvent]:
    """An assisting unit answers the lead (协办意见); a unit answers only for itself."""
    if acting_unit and unit_id and acting_unit != unit_id:
        raise PermissionDenied(f"unit {acting_unit} cannot answer for assisting unit {unit_id}")
    return list(stored.order.answer_assist(unit_id, at=at, actor=actor, rules=routing.rules, text=text))


def reply(
    stored: StoredWorkOrder,
    at: datetime,
    actor: str,
    routing: Routing,
    *,
    text: str,
    attachments: Sequence[str],
    acting_unit: str,
) -> list[WorkOrderEvent]:
    """答复: only the lead unit replies to the citizen (assisting units answer the lead)."""
    _lead_only(stored, acting_unit, "replies to the citizen")
    return stored.order.reply(text=text, at=at, actor=actor, rules=routing.rules, attachments=attachments)


def record_instruction(
    stored: StoredWorkOrder, at: datetime, actor: str, routing: Routing, *, leader_name: str, instruction: str
) -> list[WorkOrderEvent]:
    """领导批示: recorded on the case; then handling goes on as placement had decided (the unit chosen,
    accepted and assigned now), or the case stays in the manual queue when no rule placed it."""
    name, text = check_instruction(leader_name, instruction)
    order = stored.order
    events: list[WorkOrderEvent] = list(order.instruct(leader_name=name, text=text, at=at, actor=actor))
    # The name is personal data in a log line: masked there (it travels in full with the case).
    log.info("leader instruction recorded on %s by %s", order.id, mask_name(name))
    unit = order.leader_unit
    if not unit:
        stored.manual_reason = "领导已批示: no routing rule placed the case, a clerk assigns it"
    elif order.state is State.REGISTERED:
        events += order.accept(at=at, actor=SYSTEM, rules=routing.rules, reason="受理: 领导批示 recorded")
        events += order.assign(
            unit_id=unit, at=at, actor=SYSTEM, rules=routing.rules, reason=f"派单目录 {routing.catalogue.source}"
        )
    return events


def accept(stored: StoredWorkOrder, at: datetime, actor: str, routing: Routing, note: str) -> list[WorkOrderEvent]:
    """受理: the office accepts a queued registration; a unit accepts (签收) what was assigned to it."""
    if stored.order.state is State.REGISTERED:
        return stored.order.accept(at=at, actor=actor, rules=routing.rules, reason=note)
    if stored.order.state in (State.ASSIGNED, State.REOPENED):
        return stored.order.start(at=at, actor=actor, reason=note)
    raise FailedPrecondition(f"cannot accept a work order in state {stored.order.state.value}", stored.order.state)


def assign_manually(
    stored: StoredWorkOrder, at: datetime, actor: str, routing: Routing, *, unit_id: str, reason: str
) -> list[WorkOrderEvent]:
    """人工分派: a clerk accepts a queued registration and assigns it to a unit of this node."""
    if unit_id not in routing.catalogue.units:
        raise InvalidArgument("unit_id", f"{unit_id!r} is not a unit of node {routing.node}")
    order = stored.order
    events: list[WorkOrderEvent] = []
    if order.state is State.REGISTERED:
        events += order.accept(at=at, actor=actor, rules=routing.rules, reason="受理 (人工分派)")
    events += order.assign(unit_id=unit_id, at=at, actor=actor, rules=routing.rules, reason=reason)
    stored.manual_reason = ""
    return events


def arbitrate(
    stored: StoredWorkOrder, at: datetime, actor: str, routing: Routing, *, reassign: bool, unit_id: str, reason: str
) -> list[WorkOrderEvent]:
    if reassign and unit_id and unit_id not in routing.catalogue.units:
        raise InvalidArgument("new_unit_id", f"{unit_id} is not a unit of node {routing.node}")
    outcome = ArbitrationOutcome.REASSIGN if reassign else ArbitrationOutcome.UPHOLD
    return stored.order.arbitrate(
        outcome=outcome, at=at, actor=actor, rules=routing.rules, unit_id=unit_id or None, reason=reason
    )


def request_extension(
    stored: StoredWorkOrder, at: datetime, actor: str, routing: Routing, *, days: int, reason: str
) -> list[WorkOrderEvent]:
    limit = routing.rules.policy.settle_extension_max_days
    if not 1 <= days <= limit:
        raise InvalidArgument("days", f"an extension is 1 to {limit} days, got {days}")
    events = stored.order.request_extension(at=at, actor=actor, reason=f"{reason} (+{days} days asked)")
    stored.requested_days = days
    return events


def decide_extension(
    stored: StoredWorkOrder, at: datetime, actor: str, routing: Routing, *, approve: bool, reason: str
) -> list[WorkOrderEvent]:
    if approve:
        days = stored.requested_days or routing.rules.policy.settle_extension_max_days
        return stored.order.approve_extension(days=days, at=at, actor=actor, rules=routing.rules, reason=reason)
    return stored.order.reject_extension(at=at, actor=actor, reason=reason)


def review_decision(
    stored: StoredWorkOrder, at: datetime, actor: str, routing: Routing, *, redo: bool, reason: str
) -> list[WorkOrderEvent]:
    """复查: a redo reopens the work order with the review-decision limit; upholding closes a replied one."""
    if not (reason or "").strip():
        raise InvalidArgument("reason", "the review opinion (复查意见) is required")
    if redo:
        return stored.order.review(at=at, actor=actor, rules=routing.rules, reason=reason)
    return stored.order.close(at=at, actor=actor, reason=f"复查维持: {reason}")


def _changing(uow: RoutingUnitOfWork, case_id: str) -> StoredWorkOrder | None:
    """This node's work order for the case, locked until commit: for an event or command consumer that changes it.

    Consumers run beside the RPCs (which load with ``_load``) and the sweep. Read without the lock on
    PostgreSQL (read committed), a consumer acted on the state from before a concurrent RPC's commit
    and then wrote it back over that commit: a visit's outcome recorded while the unit replied undid
    the reply (the work order EXTENDED again) and numbered its EXTENDED event after the reply's, so
    the registering node's TrackCase went back to EXTENDED. SQLite's BEGIN IMMEDIATE serialises anyway.
    """
    return uow.for_case(case_id, for_update=True)


def on_case_evaluated(
    case_id: str,
    *,
    satisfied: bool | None,
    comment: str,
    uow: RoutingUnitOfWork,
    routing: Routing,
    now: datetime,
    rating: str = "",
) -> StoredWorkOrder | None:
    """满意度: satisfied closes a replied work order; unsatisfied reopens once (退回重办), then goes to 复查.

    ``satisfied`` None means the citizen asked for a review (review_requested). ``rating`` (the
    satisfaction name) for a rating registered at another node (a command): announced here as
    ``case_evaluated``, so the tiers of the owner count it too.
    """
    stored = _changing(uow, case_id)
    if stored is None or stored.order.node != routing.node:
        return None
    order = stored.order
    now = to_utc(now)
    if rating:
        unit = order.unit_id or ""
        uow.emit(case_id, [RatingApplied(case_id, rating, comment, order.id, unit, now)])
    events: list[WorkOrderEvent]
    if satisfied is True:
        if order.state is not State.REPLIED:
            return stored
        events = order.close(at=now, actor="citizen", reason="satisfied")
    elif satisfied is False and order.reopen_count == 0 and order.state is State.REPLIED:
        events = order.reopen(at=now, actor="citizen", rules=routing.rules, reason=comment or "unsatisfied (不满意)")
    else:
        if order.state not in (State.REPLIED, State.CLOSED) or order.reviewed:
            return stored
        why = comment or ("unsatisfied again: 复查" if satisfied is False else "review requested (复查申请)")
        events = order.review(at=now, actor="citizen", rules=routing.rules, reason=why)
    _persist(uow, stored, routing, events, now)
    return stored


def on_visit_outcome(
    case_id: str, *, note: str, uow: RoutingUnitOfWork, routing: Routing, now: datetime
) -> StoredWorkOrder | None:
    """视频接访: the outcome of a leader's video reception joins the history of the case's work order here."""
    return _note_here(case_id, uow, routing, now, lambda order, at: order.visit_held(at=at, actor="video", note=note))


def on_consultation(
    case_id: str, *, label: str, note: str, uow: RoutingUnitOfWork, routing: Routing, now: datetime
) -> StoredWorkOrder | None:
    """远程会商: a consultation about the case, booked or held (with its minutes), joins the history of
    the case's work order here, on the same terms as a video reception's outcome."""
    return _note_here(
        case_id, uow, routing, now, lambda order, at: order.consulted(at=at, actor="video", label=label, note=note)
    )


def _note_here(
    case_id: str,
    uow: RoutingUnitOfWork,
    routing: Routing,
    now: datetime,
    note: Callable[[WorkOrder, datetime], list[WorkOrderChanged]],
) -> StoredWorkOrder | None:
    """A fact about the case (not a transition) in the history of this node's work order for it.

    Only while this node handles the case: a work order handed elsewhere (TRANSFERRED) is not this
    node's to write (its owner epoch is stale above), and a case without one here is not known.
    """
    stored = _changing(uow, case_id)
    if stored is None or stored.order.node != routing.node or stored.order.state is State.TRANSFERRED:
        return None
    now = to_utc(now)
    events: list[WorkOrderEvent] = list(note(stored.order, now))
    _persist(uow, stored, routing, events, now)
    return stored


@dataclass(frozen=True)
class WithdrawalOutcome:
    """What a citizen's withdrawal (撤回) did to this node's work order for the case.

    ``state`` is the work order's state after it, None when this node holds no work order of its own
    for the case (never placed here, or only a replica). ``applied`` False with a state is a refusal:
    the work order was already past withdrawing (closed, replied, merged, handed on, withdrawn).
    """

    applied: bool
    state: State | None


def on_case_withdrawn(
    case_id: str, *, reason: str, uow: RoutingUnitOfWork, routing: Routing, now: datetime
) -> WithdrawalOutcome:
    """撤回: the citizen withdrew the case (``case_withdrawn`` here, or the command from the registering node).

    The work order ends WITHDRAWN with its clocks stopped. One that can no longer be withdrawn stays as
    it is: the outcome says so and nothing is raised, so the event is acknowledged, never retried.
    """
    stored = _changing(uow, case_id)
    if stored is None or stored.order.node != routing.node:
        return WithdrawalOutcome(applied=False, state=None)
    order = stored.order
    if (order.state, Action.WITHDRAW) not in TRANSITIONS:
        return WithdrawalOutcome(applied=False, state=order.state)
    now = to_utc(now)
    if order.state is State.MERGED:
        uow.remove_merge(case_id)  # 并单: it no longer follows its main case
    events = order.withdraw(at=now, actor="citizen", reason=reason or "withdrawn by the citizen (撤回)")
    _persist(uow, stored, routing, events, now)
    return WithdrawalOutcome(applied=True, state=order.state)


# -- supervision -------------------------------------------------------------------------------------


def supervise(
    *,
    case_id: str,
    work_order_id: str,
    actor: str,
    expected_version: int,
    level: str,
    demand: str,
    due_at: datetime | None,
    uow_factory: UnitOfWorkFactory,
    routing: Routing,
    now: datetime,
) -> SupervisionSent:
    """Record a chase or supervision directive of this node's office and announce it."""
    who = _actor(actor)
    if level not in LEVELS:
        raise InvalidArgument("level", f"expected one of {', '.join(LEVELS)}, got {level!r}")
    if not (demand or "").strip():
        raise InvalidArgument("demand", "what the supervisor demands is required")
    if due_at is None:
        raise InvalidArgument("due_at", "when the demand must be met is required")
    now = to_utc(now)
    if to_utc(due_at) <= now:
        raise InvalidArgument("due_at", "must be in the future")
    if not case_id and not work_order_id:
        raise InvalidArgument("case_id", "give case_id or work_order_id")
    with uow_factory() as uow:
        stored = uow.get(work_order_id) if work_order_id else uow.for_case(case_id)
        if work_order_id and stored is None:
            raise NotFound("work order", work_order_id)
        if stored is not None and case_id and stored.order.case_id != case_id:
            raise InvalidArgument("work_order_id", f"{work_order_id} belongs to case {stored.order.case_id}")
        about = stored.order.case_id if stored is not None else case_id
        known = uow.case_version(about)
        owner = _owner_elsewhere(stored, known, uow.case_owner(about), routing.node)
        if owner is not None:
            # An ancestor's 督办 of a case a node below owns: the owner records it (DESIGN §3).
            if expected_version and expected_version != owner.version:
                raise Conflict(f"case {about} is at version {owner.version}, not {expected_version}: re-read it")
            supervision = Supervision(
                supervision_id=routing.new_id(),
                case_id=about,
                work_order_id="",
                level=level,
                by_node=routing.node,
                by_actor=who,
                demand=demand.strip(),
                due_at=to_utc(due_at),
                issued_at=now,
                region_code=(stored.order.region_code or "") if stored is not None else "",
            )
            uow.send_supervision(SupervisionRequested(supervision, owner.owner_node, owner.owner_epoch))
            uow.commit()
            return SupervisionSent(supervision, owner.owner_node)
        if known is None:
            raise NotFound("case", about)
        if expected_version and expected_version != known[0]:
            raise Conflict(f"case {about} is at version {known[0]}, not {expected_version}: re-read it")
        supervision = Supervision(
            supervision_id=routing.new_id(),
            case_id=about,
            work_order_id=stored.order.id if stored is not None else "",
            level=level,
            by_node=routing.node,
            by_actor=who,
            demand=demand.strip(),
            due_at=to_utc(due_at),
            issued_at=now,
            region_code=(stored.order.region_code or "") if stored is not None else "",
        )
        uow.add_supervision(supervision)
        uow.emit(about, [SupervisionRecorded(supervision)])
        uow.commit()
    return SupervisionSent(supervision, "")


@dataclass(frozen=True)
class SupervisionSent:
    """A supervision as issued here; ``sent_to`` names the owner it went to as a command ("" when recorded here)."""

    supervision: Supervision
    sent_to: str


def _owner_elsewhere(
    stored: StoredWorkOrder | None, known: tuple[int, int] | None, replica: CaseOwner | None, node: str
) -> CaseOwner | None:
    """The node that owns the case when it is not this one (None when this node handles it or knows nothing).

    This node owns a case it holds a work order or a version for, unless that work order was handed
    on (TRANSFERRED) or a replica names a newer owner elsewhere.
    """
    here_epoch = known[1] if known is not None else -1
    if replica is not None and replica.owner_node != node and replica.owner_epoch > here_epoch:
        return replica
    if stored is not None and stored.order.state is State.TRANSFERRED and stored.order.transferred_to:
        if replica is not None and replica.owner_node != node and replica.owner_epoch >= here_epoch:
            return replica
        # The hand-off already raised this node's epoch to the receiver's (``emit``): naming one more
        # would be newer than any node knows, and exchange would then never chase the case further.
        return CaseOwner(stored.order.case_id, stored.order.transferred_to, here_epoch, known[0] if known else 0)
    if known is None and replica is not None and replica.owner_node != node:
        return replica
    return None


def handed_on_to(case_id: str, uow: RoutingUnitOfWork, node: str) -> CaseOwner | None:
    """The owner a command delivered here must follow to, when this node has handed the case on.

    Exchange delivers a command where its issuer said the owner was, and chases a newer owner only
    when its own node already knows of the hand-off. A command can still arrive just after this
    node's routing handed the case on (交办 down, 上报 up) and before its exchange heard of it: the
    hand-off and the command can even come down in one batch. Applied here, a 督办 would be recorded
    by a node that no longer handles the case (counted at the city, never heard of at the county that
    handles it) and a rating would close nothing. None: this node handles the case, or does not know it.
    """
    stored = _changing(uow, case_id)  # the command applied next sees the same work order
    known = uow.case_version(case_id)
    if stored is None or known is None or stored.order.state is not State.TRANSFERRED:
        return None
    return _owner_elsewhere(stored, known, uow.case_owner(case_id), node)


def apply_supervision_command(supervision: Supervision, uow: RoutingUnitOfWork) -> bool:
    """An ancestor's 督办 delivered here, the owner: recorded once (its id) and announced, so every
    tier above keeps the same record. False when this node does not hold the case (nothing recorded)."""
    if uow.has_supervision(supervision.supervision_id):
        return False
    stored = uow.for_case(supervision.case_id)
    if uow.case_version(supervision.case_id) is None:
        return False
    if stored is not None:
        supervision = dataclasses.replace(
            supervision, work_order_id=stored.order.id, region_code=stored.order.region_code or ""
        )
    uow.add_supervision(supervision)
    uow.emit(supervision.case_id, [SupervisionRecorded(supervision)])
    return True


def note_replica_owner(owner: CaseOwner, uow: RoutingUnitOfWork, node: str) -> None:
    """A replica of a case the subtree handles says who owns it; kept for the supervisors here."""
    if owner.owner_node and owner.owner_node != node:
        uow.note_owner(owner)


# -- the sweep ---------------------------------------------------------------------------------------


@dataclass
class SweepReport:
    scanned: int = 0
    warnings: int = 0
    chases: int = 0
    supervisions: int = 0
    recomputed: int = 0
    open: int = 0
    overdue: int = 0


def _batches(fetch: Callable[[str], list[StoredWorkOrder]]) -> Iterator[list[StoredWorkOrder]]:
    after = ""
    while True:
        batch = fetch(after)
        if not batch:
            return
        yield batch
        after = batch[-1].order.id


def run_sweep(
    *, uow_factory: UnitOfWorkFactory, routing: Routing, now: datetime, batch_size: int = 1000
) -> SweepReport:
    """One pass: recompute provisional deadlines whose year is now known, then warn, chase and supervise.

    Work orders are loaded in batches of ``batch_size`` (keyset on id) and each batch commits on its own,
    so a sweep over a million work orders holds one batch in memory and a crash loses at most one batch.
    """
    now = to_utc(now)
    report = SweepReport()
    report.recomputed = recompute_provisional_deadlines(
        uow_factory=uow_factory, routing=routing, now=now, batch_size=batch_size
    )
    after = ""
    while True:
        with uow_factory() as uow:
            batch = uow.due_for_sweep(now, after_id=after, limit=batch_size)
            if not batch:
                break
            after = batch[-1].order.id
            report.scanned += len(batch)
            changes = _sweep_batch(batch, routing, now, report)
            # One bulk write per batch: work orders, history, supervisions, versions, outbox.
            uow.save_batch(changes)
            uow.commit()
    with uow_factory() as uow:
        report.open, report.overdue = uow.count_open(now)
    return report


def _sweep_batch(
    batch: Sequence[StoredWorkOrder], routing: Routing, now: datetime, report: SweepReport
) -> list[BatchChange]:
    """Apply the pure ``sweep`` decisions to one loaded batch; returns the changed work orders in order."""
    by_id = {s.order.id: s for s in batch}
    changes: dict[str, BatchChange] = {}
    for action in sweep([s.order for s in batch], now, routing.rules.policy, routing.rules.calendar):
        stored = by_id[action.work_order_id]
        events: list[RoutingEvent] = list(stored.order.record_sweep(action, at=now))
        if not events:
            continue
        change = changes.get(stored.order.id)
        if change is None:
            change = changes[stored.order.id] = BatchChange(stored)
        if action.stage is Stage.WARNING:
            report.warnings += 1
        else:
            chase = action.stage is Stage.CHASE
            report.chases += chase
            report.supervisions += not chase
            supervision = Supervision(
                supervision_id=routing.new_id(),
                case_id=action.case_id,
                work_order_id=action.work_order_id,
                level="chase" if chase else "supervise",
                by_node=routing.node if chase else routing.parent,
                by_actor=SYSTEM,
                demand=(
                    f"{action.kind} deadline {action.deadline.isoformat()} missed"
                    + _owing(events)
                    + ": "
                    + ("handle it now (催办)" if chase else "the tier above supervises (督办)")
                ),
                due_at=supervision_at(now, routing.rules.policy, routing.rules.calendar),
                issued_at=now,
                region_code=stored.order.region_code or "",
            )
            change.supervisions.append(supervision)
            events.append(SupervisionRecorded(supervision))
        change.events += events
    for change in changes.values():
        _refresh(change.stored, routing, now, before=change.stored.provisional)
    return list(changes.values())


def _owing(events: Sequence[RoutingEvent]) -> str:
    """For a missed assist deadline (协办): the assisting units that owe their answer, named in the chase."""
    units = [u for e in events if isinstance(e, DeadlineStageReached) for u in e.unit_ids]
    return f" by assisting unit(s) {', '.join(units)}" if units else ""


def recompute_provisional_deadlines(
    *, uow_factory: UnitOfWorkFactory, routing: Routing, now: datetime, batch_size: int = 1000
) -> int:
    """Deadlines counted Mon-Fri for an unknown year are recomputed once that year's calendar is known.

    Called by the sweep and at once when a year is loaded (``load_calendar_years``). Each work order
    records every moved deadline in its history and emits it (WorkOrderChanged "recompute_deadlines"),
    so the tiers above see the same due dates. Returns the number of work orders recomputed.
    """
    now = to_utc(now)
    recomputed = 0
    after = ""
    while True:
        with uow_factory() as uow:
            batch = uow.provisional_batch(after_id=after, limit=batch_size)
            if not batch:
                return recomputed
            after = batch[-1].order.id
            changes: list[BatchChange] = []
            for stored in batch:
                order = stored.order
                running = {**order.deadlines, **order.windows}
                years = {china_date(running[k]).year for k in stored.provisional if k in running}
                if any(not routing.calendar.knows_year(y) for y in years):
                    continue  # still unknown: nothing to gain yet
                events = order.calendar_loaded(routing.rules, at=now, years=years, provisional=stored.provisional)
                _refresh(stored, routing, now, before=stored.provisional)
                changes.append(BatchChange(stored, list(events)))
                recomputed += 1
            uow.save_batch(changes)
            uow.commit()


class CalendarLoader(Protocol):
    """Where loaded calendar years go: stored for the node and counted on at once (``NodeCalendar``)."""

    def load_years(self, years: list[OfficialYear], *, file_name: str, loaded_by: str, at: datetime) -> None: ...


def load_calendar_years(
    years: list[OfficialYear],
    *,
    calendar: CalendarLoader,
    uow_factory: UnitOfWorkFactory,
    routing: Routing,
    now: datetime,
    file_name: str,
    actor: str,
) -> int:
    """An operator loads official years (already validated): kept for the node, provisional deadlines recomputed."""
    if not years:
        raise InvalidArgument("content", "the file holds no year")
    calendar.load_years(years, file_name=file_name, loaded_by=actor, at=to_utc(now))
    return recompute_provisional_deadlines(uow_factory=uow_factory, routing=routing, now=now)


def get_work_order(work_order_id: str, *, uow_factory: UnitOfWorkFactory) -> StoredWorkOrder:
    if not work_order_id:
        raise InvalidArgument("work_order_id", "must be set")
    with uow_factory() as uow:
        found = uow.get(work_order_id)
    if found is None:
        raise NotFound("work order", work_order_id)
    return found


def record_replicated_supervision(supervision: Supervision, uow: RoutingUnitOfWork) -> None:
    """A descendant's 催办/督办 record, kept read-only so ancestors see their subtree's supervision.

    The consumer's inbox makes a redelivery a no-op; the record is never changed here, only at the
    node that owns the case.
    """
    uow.add_supervision(supervision)


# -- 第三方评价 (third-party sampled evaluation) ----------------------------------------------------


def draw_evaluation_sample(
    *,
    month: str,
    seed: str,
    percent: int,
    minimum: int,
    actor: str,
    uow_factory: UnitOfWorkFactory,
    routing: Routing,
    now: datetime,
) -> tuple[EvaluationSample, list[SampleItem]]:
    """Draw the month's sample of the cases this node closed in it, once; each sampled case emits
    ``case_sampled`` (its next version), so every tier above knows what was sampled."""
    who = _actor(actor)
    month = check_month(month)
    rule = check_rule(percent, minimum)
    seed = check_seed(seed)
    now = to_utc(now)
    start, end = check_month_begun(month, now, routing.month_start_day)
    with uow_factory() as uow:
        known = uow.evaluation_sample(month)
        if known is not None:
            raise FailedPrecondition(
                f"the {month} sample was already drawn at {known.drawn_at:%Y-%m-%d %H:%M} UTC by {known.drawn_by} "
                f"with seed {known.seed}"
            )
        closed = uow.closed_between(start, min(end, now))
        sample, items, events = new_sample(
            closed, month=month, node=routing.node, seed=seed, rule=rule, actor=who, at=now
        )
        uow.save_evaluation_sample(sample, items)
        for event in events:
            uow.emit(event.case_id, [event])
        uow.commit()
    log.info("evaluation sample %s drawn: %d of %d closed cases", month, len(items), len(closed))
    return sample, items


@dataclass(frozen=True)
class SampleView:
    """A sampled case as the evaluation group sees it: personal data masked in every text."""

    item: SampleItem
    title: str
    body: str
    reply_text: str


def _masked(text: str) -> str:
    return mask(text).text if text else ""


def _views(uow: RoutingUnitOfWork, items: Sequence[SampleItem]) -> list[SampleView]:
    texts = uow.sampled_texts(items)
    out = []
    for item in items:
        title, body, reply = texts.get(item.case_id, ("", "", ""))
        out.append(SampleView(item, _masked(title), _masked(body), _masked(reply)))
    return out


def _with_rated(uow: RoutingUnitOfWork, sample: EvaluationSample) -> EvaluationSample:
    rated = uow.rated_by_unit(sample.month)
    sample.units = [UnitCount(u.unit_id, u.closed, u.sampled, rated.get(u.unit_id, 0)) for u in sample.units]
    return sample


def list_evaluation_sample(
    *,
    month: str,
    unrated_only: bool,
    after: tuple[str, int] | None,
    limit: int,
    uow_factory: UnitOfWorkFactory,
) -> tuple[EvaluationSample, list[SampleView], int]:
    """A page of the month's sample (masked), with the sample's record and its counts."""
    month = check_month(month)
    with uow_factory() as uow:
        sample = uow.evaluation_sample(month)
        if sample is None:
            raise NotFound("evaluation sample", month)
        items, total = uow.sample_items(month, unrated_only=unrated_only, after=after, limit=limit)
        return _with_rated(uow, sample), _views(uow, items), total


def record_third_party_rating(
    *,
    month: str,
    case_id: str,
    actor: str,
    rating: str,
    comment: str,
    uow_factory: UnitOfWorkFactory,
    now: datetime,
) -> SampleView:
    """The evaluation group's one rating of a sampled case; emits ``third_party_rated``."""
    who = _actor(actor)
    month = check_month(month)
    wanted = (case_id or "").strip()
    if not wanted:
        raise InvalidArgument("case_id", "the sampled case is required")
    rating, text = check_rating(rating, comment)
    now = to_utc(now)
    with uow_factory() as uow:
        item = uow.sample_item(month, wanted)
        if item is None:
            raise NotFound("sampled case", f"{wanted} of the {month} sample")
        order = uow.get(item.work_order_id)
        if order is not None and order.order.state is State.TRANSFERRED:
            raise FailedPrecondition(f"case {wanted} was handed to {order.order.transferred_to} since it was sampled")
        event = item.rate(rating, text, evaluator=who, at=now)
        uow.save_rating(item)
        uow.emit(wanted, [event])
        view = _views(uow, [item])[0]
        uow.commit()
    log.info("third-party rating recorded on %s of the %s sample", wanted, month)
    return view
