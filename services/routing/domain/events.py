"""What a work order records and tells: its history entries, the events it returns for the outbox,
its assisting units and a leader's instruction, and the sweep's decisions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from services.common.errors import InvalidArgument
from services.routing.domain.lifecycle import Action, Stage, State


@dataclass(frozen=True)
class HistoryEntry:
    at: datetime
    actor: str
    action: str
    from_state: State | None
    to_state: State
    reason: str = ""


DeadlineList = tuple[tuple[str, datetime], ...]


@dataclass(frozen=True)
class WorkOrderCreated:
    work_order_id: str
    case_id: str
    node: str
    category: str | None
    region_code: str | None
    at: datetime
    actor: str
    deadlines: DeadlineList
    # Filled in by the placing use case once jurisdiction has decided (register knows neither).
    unit_id: str | None = None
    manual_queue: bool = False  # waits for a clerk (人工分派)


@dataclass(frozen=True)
class WorkOrderChanged:
    """One transition; ``deadlines`` are all deadlines and windows after it, sorted by kind."""

    work_order_id: str
    case_id: str
    action: Action | str  # an Action, or a label: escalate_up, recompute_deadlines
    from_state: State
    to_state: State
    actor: str
    at: datetime
    reason: str
    unit_id: str | None
    deadlines: DeadlineList
    target: str | None = None  # unit for assign/arbitrate, node for transfer, case for merge
    reply_text: str = ""  # with a reply: the answer the citizen reads at the registering node
    assisting_unit_id: str = ""  # with assist_request / assist_answer / assist_late_answer: the assisting unit
    main_case_id: str = ""  # with merge / unmerge / main:<action>: the main case (并单)
    leader_name: str = ""  # with instruct: the leader who instructed (批示)


@dataclass(frozen=True)
class ReplyGiven:
    """The unit's answer, for intake to show to the citizen."""

    work_order_id: str
    case_id: str
    unit_id: str | None
    text: str
    attachments: tuple[str, ...]
    at: datetime


@dataclass(frozen=True)
class DeadlineStageReached:
    """A sweep stage was recorded on the work order (proto ``DeadlineWarning``)."""

    work_order_id: str
    case_id: str
    node: str
    unit_id: str | None
    kind: str
    stage: Stage
    deadline: datetime
    at: datetime
    unit_ids: tuple[str, ...] = ()  # kind assist: the assisting units that owe their answer


@dataclass
class Assist:
    """One assisting unit's part (协办): asked when, due when (its own limit), answered when, late or not."""

    unit_id: str
    requested_at: datetime
    due: datetime
    answered_at: datetime | None = None
    answer: str = ""
    late: bool = False

    @property
    def pending(self) -> bool:
        return self.answered_at is None


@dataclass(frozen=True)
class Instruction:
    """A leader's instruction (批示) on the case: who, what, when, and who recorded it."""

    leader_name: str
    text: str
    at: datetime
    recorded_by: str


WorkOrderEvent = WorkOrderCreated | WorkOrderChanged | ReplyGiven | DeadlineStageReached


@dataclass(frozen=True)
class SweepAction:
    """What the sweep decided for one deadline of one work order; apply with ``WorkOrder.record_sweep``."""

    work_order_id: str
    case_id: str
    node: str  # supervision goes to this node's parent; the handler resolves it on the region tree
    unit_id: str | None
    kind: str
    stage: Stage
    deadline: datetime
    boundary: datetime  # the instant the stage became due


def required(field_name: str, value: str | None, what: str) -> str:
    text = (value or "").strip()
    if not text:
        raise InvalidArgument(field_name, f"{what} is required")
    return text
