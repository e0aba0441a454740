"""What routing's use cases need: the unit-of-work Protocol (``store.SqlRoutingUnitOfWork`` implements
it), the node's ``Routing``, the records the use cases pass to it and the events they emit beside the
work order's own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from services.common.calendar import OfficialYear
from services.common.ids import registering_node
from services.common.regions import RegionTree
from services.routing.domain import State, WorkOrder, WorkOrderEvent
from services.routing.domain.timelimits import TimeRules
from services.routing.evaluation import CaseSampled, ClosedCase, EvaluationSample, SampleItem, ThirdPartyRated
from services.routing.inbox import InboxRow
from services.routing.jurisdiction import DispatchCatalogue
from services.routing.leader import LeaderClasses
from services.routing.provisional import ProvisionalCalendar

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
    with_history: bool = False  # each work order's history too (one case's few work orders)


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

    def list_inbox(
        self, query: WorkOrderQuery, *, after: tuple[datetime, str] | None, limit: int
    ) -> tuple[list[InboxRow], int]: ...

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


class CalendarLoader(Protocol):
    """Where loaded calendar years go: stored for the node and counted on at once (``NodeCalendar``)."""

    def load_years(self, years: list[OfficialYear], *, file_name: str, loaded_by: str, at: datetime) -> None: ...


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
