"""The work order (工单) aggregate: its handling lifecycle, deadlines, history, and the deadline sweep.

Plain domain code (cosmicpython): no database, no broker. Every state change goes through the
explicit ``TRANSITIONS`` table (Signalen style), writes a ``HistoryEntry`` and returns domain
events for the handler to put in the outbox. Anything the table does not list raises
``FailedPrecondition`` naming the action and the current state.

Deadlines come in two sorts, both computed by ``services.routing.timelimits``:

* ``deadlines`` are duties (assign, accept_notice, settle or the hotline class, review_decision):
  the sweep warns before them, chases (催办) after them and asks the tier above to supervise (督办).
* ``windows`` are rights that lapse (the unit's objection window, the citizen's review window):
  checked when the right is used, never chased.

Every clock keeps its start, so pauses (waiting for the citizen, a hearing) and an approved
extension recompute the deadline from the same rule rather than patching dates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from services.common.calendar import WorkingCalendar
from services.common.clock import china_date, to_utc
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.regions import Tier
from services.routing.timelimits import (
    DeadlineKind,
    Limit,
    TimeLimitPolicy,
    TimeRules,
    supervision_at,
    warning_at,
)

__all__ = [
    "ACTIONS",
    "ASSIST_ANSWER",
    "ASSIST_LATE_ANSWER",
    "ASSIST_REQUEST",
    "ASSIST_STATES",
    "ESCALATE_UP",
    "FOLLOW_MAIN",
    "HOTLINE_KINDS",
    "INSTRUCT",
    "LEADER_HOLD",
    "MERGE_IN",
    "MERGE_OUT",
    "OPEN_STATES",
    "RECOMPUTE_DEADLINES",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "VISIT_OUTCOME",
    "Action",
    "ArbitrationOutcome",
    "Assist",
    "DeadlineStageReached",
    "HistoryEntry",
    "Instruction",
    "ReplyGiven",
    "Stage",
    "State",
    "SweepAction",
    "WorkOrder",
    "WorkOrderChanged",
    "WorkOrderCreated",
    "WorkOrderEvent",
    "allowed_actions",
    "sweep",
]


class State(StrEnum):
    """Handling states; the values are the proto ``CaseState`` names without the prefix."""

    REGISTERED = "REGISTERED"
    ASSIGNED = "ASSIGNED"
    ACCEPTED = "ACCEPTED"
    REFUSED = "REFUSED"
    IN_PROGRESS = "IN_PROGRESS"
    OBJECTED = "OBJECTED"
    EXTENDED = "EXTENDED"
    REPLIED = "REPLIED"
    CLOSED = "CLOSED"
    REOPENED = "REOPENED"
    TRANSFERRED = "TRANSFERRED"
    WITHDRAWN = "WITHDRAWN"
    MERGED = "MERGED"


class Action(StrEnum):
    ACCEPT = "accept"  # 受理 by the 信访/12345 office
    REFUSE = "refuse"  # 不予受理, with reason
    ASSIGN = "assign"  # 交办 to a unit of this node
    START = "start"  # the unit signs for it (签收) and starts handling
    OBJECT = "object"  # the unit says it is not its business (异议)
    ARBITRATE = "arbitrate"  # the office decides an objection: reassign (改派) or uphold
    REQUEST_EXTENSION = "request_extension"  # 延期申请, once
    APPROVE_EXTENSION = "approve_extension"
    REJECT_EXTENSION = "reject_extension"
    REPLY = "reply"  # 答复
    CLOSE = "close"  # 办结
    REOPEN = "reopen"  # 退回重办 after an unsatisfied evaluation, once
    REVIEW = "review"  # 复查 requested by the citizen within the review window
    WITHDRAW = "withdraw"  # the citizen withdraws (撤回)
    MERGE = "merge"  # 并单 into another case
    UNMERGE = "unmerge"  # the merge is undone (before the main case's reply): back to where it was
    TRANSFER = "transfer"  # hand-off to another node in flight (交办/上报/转送)
    TAKE_BACK = "take_back"  # a hand-off came back (退回) or could not be delivered
    PAUSE = "pause"  # clock stops: waiting for the citizen's supplement, a hearing (听证)
    RESUME = "resume"


# History/event label of a transfer that is an escalation to the tier above (上报).
ESCALATE_UP = "escalate_up"
# History/event label of a deadline recomputed because an official calendar year was loaded; not a
# transition (the state stays), so not an ``Action``. Replicated as WorkOrderChanged like the others.
RECOMPUTE_DEADLINES = "recompute_deadlines"
# History/event label on the main case's work order naming the cases merged into it (并单); not a transition.
MERGE_IN = "merge_in"
MERGE_OUT = "merge_out"  # ... and the one taken out again (undo before the reply)
# Prefix of the history/event label a merged case's work order gets for each change of its main case
# ("main:reply"): the merged citizen follows the main case's progress; its own state stays MERGED.
FOLLOW_MAIN = "main:"
# History/event labels of 主办/协办: the lead asks assisting units (one entry per unit), an assisting unit
# answers the lead (on time or late). Not transitions: the lead's work order keeps its state.
ASSIST_REQUEST = "assist_request"
ASSIST_ANSWER = "assist_answer"
ASSIST_LATE_ANSWER = "assist_late_answer"
# History/event labels of 领导批转: the case waits in a leader's queue, then the instruction (批示) is recorded.
LEADER_HOLD = "leader_hold"
INSTRUCT = "instruct"
# What the office may not do while the case waits for the leader's instruction.
_HELD_ACTIONS = frozenset({Action.ACCEPT, Action.REFUSE, Action.ASSIGN, Action.START, Action.TRANSFER})
# States in which the lead unit handles the case and may ask assisting units (协办).
ASSIST_STATES = frozenset({State.ASSIGNED, State.IN_PROGRESS, State.EXTENDED, State.REOPENED})
# History/event label of a leader's video reception (视频接访) held on the case, with its outcome;
# not a transition either.
VISIT_OUTCOME = "visit_outcome"
# History/event labels of a remote consultation (远程会商) of units of different tiers about the case:
# booked (when, which units, the topic) and held (its minutes). Not transitions either.
CONSULTATION_BOOKED = "consultation_booked"
CONSULTATION_HELD = "consultation_held"
CONSULTATION_LABELS = frozenset({CONSULTATION_BOOKED, CONSULTATION_HELD})

S, A = State, Action

# The whole lifecycle. A pair that is not a key here is illegal, whatever the arguments.
TRANSITIONS: Mapping[tuple[State, Action], State] = {
    (S.REGISTERED, A.ACCEPT): S.ACCEPTED,
    (S.REGISTERED, A.REFUSE): S.REFUSED,
    (S.REGISTERED, A.TRANSFER): S.TRANSFERRED,
    (S.REGISTERED, A.MERGE): S.MERGED,
    (S.REGISTERED, A.WITHDRAW): S.WITHDRAWN,
    (S.ACCEPTED, A.ASSIGN): S.ASSIGNED,
    (S.ACCEPTED, A.TRANSFER): S.TRANSFERRED,
    (S.ACCEPTED, A.MERGE): S.MERGED,
    (S.ACCEPTED, A.WITHDRAW): S.WITHDRAWN,
    (S.ACCEPTED, A.PAUSE): S.ACCEPTED,
    (S.ACCEPTED, A.RESUME): S.ACCEPTED,
    (S.ASSIGNED, A.START): S.IN_PROGRESS,
    (S.ASSIGNED, A.TRANSFER): S.TRANSFERRED,  # 上报 of an assigned case (escalate_up)
    (S.ASSIGNED, A.OBJECT): S.OBJECTED,
    (S.ASSIGNED, A.MERGE): S.MERGED,
    (S.ASSIGNED, A.WITHDRAW): S.WITHDRAWN,
    (S.ASSIGNED, A.PAUSE): S.ASSIGNED,
    (S.ASSIGNED, A.RESUME): S.ASSIGNED,
    (S.OBJECTED, A.ARBITRATE): S.ASSIGNED,
    (S.OBJECTED, A.TRANSFER): S.TRANSFERRED,
    (S.OBJECTED, A.WITHDRAW): S.WITHDRAWN,
    (S.IN_PROGRESS, A.OBJECT): S.OBJECTED,
    (S.IN_PROGRESS, A.REQUEST_EXTENSION): S.IN_PROGRESS,
    (S.IN_PROGRESS, A.APPROVE_EXTENSION): S.EXTENDED,
    (S.IN_PROGRESS, A.REJECT_EXTENSION): S.IN_PROGRESS,
    (S.IN_PROGRESS, A.REPLY): S.REPLIED,
    (S.IN_PROGRESS, A.WITHDRAW): S.WITHDRAWN,
    (S.IN_PROGRESS, A.TRANSFER): S.TRANSFERRED,  # 上报 (escalate_up)
    (S.IN_PROGRESS, A.PAUSE): S.IN_PROGRESS,
    (S.IN_PROGRESS, A.RESUME): S.IN_PROGRESS,
    (S.IN_PROGRESS, A.MERGE): S.MERGED,
    (S.EXTENDED, A.REPLY): S.REPLIED,
    (S.EXTENDED, A.WITHDRAW): S.WITHDRAWN,
    (S.EXTENDED, A.TRANSFER): S.TRANSFERRED,  # 上报 (escalate_up)
    (S.EXTENDED, A.PAUSE): S.EXTENDED,
    (S.EXTENDED, A.RESUME): S.EXTENDED,
    (S.EXTENDED, A.MERGE): S.MERGED,
    (S.REPLIED, A.CLOSE): S.CLOSED,
    (S.REPLIED, A.TRANSFER): S.TRANSFERRED,  # 上报 (escalate_up)
    (S.REPLIED, A.REOPEN): S.REOPENED,
    (S.REPLIED, A.REVIEW): S.REOPENED,
    (S.CLOSED, A.REVIEW): S.REOPENED,
    (S.REOPENED, A.ASSIGN): S.ASSIGNED,
    (S.REOPENED, A.START): S.IN_PROGRESS,
    (S.REOPENED, A.WITHDRAW): S.WITHDRAWN,
    (S.REOPENED, A.TRANSFER): S.TRANSFERRED,  # 上报 (escalate_up)
    (S.REOPENED, A.PAUSE): S.REOPENED,
    (S.REOPENED, A.RESUME): S.REOPENED,
    (S.TRANSFERRED, A.TAKE_BACK): S.REGISTERED,
    # Back to the state it was merged from (``WorkOrder.merged_from``); ASSIGNED names the usual one.
    (S.MERGED, A.UNMERGE): S.ASSIGNED,
    # A merged case's citizen may still withdraw it: it stops following its main case.
    (S.MERGED, A.WITHDRAW): S.WITHDRAWN,
}
del S, A

STATES: tuple[State, ...] = tuple(State)
ACTIONS: tuple[Action, ...] = tuple(Action)
# This node is done with the work order (CLOSED still admits a review, which reopens it).
TERMINAL_STATES = frozenset({State.REFUSED, State.CLOSED, State.WITHDRAWN, State.MERGED, State.TRANSFERRED})
OPEN_STATES = frozenset(State) - TERMINAL_STATES
HOTLINE_KINDS = frozenset(
    {DeadlineKind.HOTLINE_EMERGENCY, DeadlineKind.HOTLINE_ENQUIRY, DeadlineKind.HOTLINE_COMPLAINT}
)
_HANDLING_KINDS = HOTLINE_KINDS | {DeadlineKind.SETTLE}
_WINDOW_KINDS = frozenset({DeadlineKind.OBJECTION, DeadlineKind.REVIEW_REQUEST})


class ArbitrationOutcome(StrEnum):
    REASSIGN = "reassign"  # 改派: another unit gets it, with a fresh objection window
    UPHOLD = "uphold"  # the assignment stands; the unit may not object again


class Stage(StrEnum):
    """Escalation stages of a missed or nearing deadline, in order (proto ``DeadlineWarning.stage``)."""

    WARNING = "warning"  # 预警, before the deadline
    CHASE = "chase"  # 催办, once the deadline has passed
    SUPERVISION = "supervision"  # 督办 by the tier above, a configurable delay after the deadline


_STAGE_ORDER = (Stage.WARNING, Stage.CHASE, Stage.SUPERVISION)


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


def _required(field_name: str, value: str | None, what: str) -> str:
    text = (value or "").strip()
    if not text:
        raise InvalidArgument(field_name, f"{what} is required")
    return text


@dataclass
class WorkOrder:
    """One case's handling at one node. Build new ones with ``WorkOrder.register``."""

    id: str
    case_id: str
    node: str
    tier: Tier
    category: str | None = None
    region_code: str | None = None
    state: State = State.REGISTERED
    unit_id: str | None = None
    handling_kind: DeadlineKind = DeadlineKind.SETTLE
    deadlines: dict[str, datetime] = field(default_factory=dict)
    windows: dict[str, datetime] = field(default_factory=dict)
    clock_starts: dict[str, datetime] = field(default_factory=dict)
    pauses: list[tuple[datetime, datetime]] = field(default_factory=list)
    paused_since: datetime | None = None
    extension_requested: bool = False
    extension_pending: bool = False
    extension_days: int = 0
    objection_barred: bool = False
    reopen_count: int = 0
    reviewed: bool = False
    reply_text: str | None = None
    reply_attachments: tuple[str, ...] = ()
    replied_at: datetime | None = None
    merged_into: str | None = None
    merged_from: State | None = None
    assists: dict[str, Assist] = field(default_factory=dict)  # 协办 by unit; the lead is ``unit_id``
    leader_class: str | None = None  # 领导批转: the class that holds the case for a leader
    leader_unit: str | None = None  # the unit placement chose, assigned once the leader has instructed
    instruction: Instruction | None = None

    @property
    def awaiting_instruction(self) -> bool:
        return self.leader_class is not None and self.instruction is None

    transferred_to: str | None = None
    fired: set[tuple[str, str]] = field(default_factory=set)
    history: list[HistoryEntry] = field(default_factory=list)
    version: int = 0

    # -- creation ------------------------------------------------------------------------------

    @classmethod
    def register(
        cls,
        *,
        id: str,
        case_id: str,
        node: str,
        tier: Tier,
        at: datetime,
        actor: str,
        rules: TimeRules,
        category: str | None = None,
        region_code: str | None = None,
        handling_kind: DeadlineKind = DeadlineKind.SETTLE,
    ) -> tuple[WorkOrder, list[WorkOrderEvent]]:
        """A new work order in REGISTERED with the assign clock (and, for petitions, the notice clock)."""
        if handling_kind not in _HANDLING_KINDS:
            raise InvalidArgument("handling_kind", f"{handling_kind} is not settle or a hotline class")
        at = to_utc(at)
        order = cls(
            id=_required("id", id, "a work order id"),
            case_id=_required("case_id", case_id, "a case id"),
            node=node,
            tier=tier,
            category=category,
            region_code=region_code,
            handling_kind=handling_kind,
        )
        order._start_clock(DeadlineKind.ASSIGN, at, rules)
        # 书面告知 is owed for petitions; a 12345 call is acknowledged on the line.
        if handling_kind is DeadlineKind.SETTLE:
            order._start_clock(DeadlineKind.ACCEPT_NOTICE, at, rules)
        order.history.append(HistoryEntry(at, actor, "register", None, State.REGISTERED))
        order.version += 1
        created = WorkOrderCreated(
            work_order_id=order.id,
            case_id=order.case_id,
            node=node,
            category=category,
            region_code=region_code,
            at=at,
            actor=actor,
            deadlines=order._deadline_list(),
        )
        return order, [created]

    # -- the actions ---------------------------------------------------------------------------

    def accept(self, *, at: datetime, actor: str, rules: TimeRules, reason: str = "") -> list[WorkOrderEvent]:
        """受理: the acceptance notice is given now and the handling clock starts (条例: 自受理之日起)."""
        at = self._check(Action.ACCEPT, at)
        self.deadlines.pop(DeadlineKind.ACCEPT_NOTICE, None)
        self._start_clock(self.handling_kind, at, rules)
        return [self._changed(Action.ACCEPT, at, actor, reason)]

    def refuse(self, *, at: datetime, actor: str, reason: str) -> list[WorkOrderEvent]:
        """不予受理: needs the reason that goes into the written notice."""
        at = self._check(Action.REFUSE, at)
        reason = _required("reason", reason, "the reason for refusing (不予受理)")
        self._stop_all_clocks(at)
        return [self._changed(Action.REFUSE, at, actor, reason)]

    def assign(
        self, *, unit_id: str, at: datetime, actor: str, rules: TimeRules, reason: str = ""
    ) -> list[WorkOrderEvent]:
        """交办 to a unit: the assign deadline is met and the unit's objection window opens."""
        at = self._check(Action.ASSIGN, at)
        unit_id = _required("unit_id", unit_id, "the unit to assign to")
        self.deadlines.pop(DeadlineKind.ASSIGN, None)
        self.unit_id = unit_id
        self.objection_barred = False
        self._start_clock(DeadlineKind.OBJECTION, at, rules)
        return [self._changed(Action.ASSIGN, at, actor, reason, target=unit_id)]

    def start(self, *, at: datetime, actor: str, reason: str = "") -> list[WorkOrderEvent]:
        """签收: the unit starts handling; it may still object while its window is open."""
        at = self._check(Action.START, at)
        return [self._changed(Action.START, at, actor, reason)]

    def object(self, *, at: datetime, actor: str, reason: str) -> list[WorkOrderEvent]:
        """异议: within the objection window of the latest assignment, never after an upheld arbitration."""
        at = self._check(Action.OBJECT, at)
        reason = _required("reason", reason, "the reason for the objection")
        if self.objection_barred:
            raise FailedPrecondition("the unit may not object again: an arbitration upheld the assignment", self.state)
        window = self.windows.get(DeadlineKind.OBJECTION)
        if window is None:
            raise FailedPrecondition("no objection window is open for this work order", self.state)
        if at > window:
            raise FailedPrecondition(
                f"the objection window closed at {window.isoformat()} (5 working days after assignment)",
                self.state,
            )
        self.windows.pop(DeadlineKind.OBJECTION)
        return [self._changed(Action.OBJECT, at, actor, reason)]

    def arbitrate(
        self,
        *,
        outcome: ArbitrationOutcome,
        at: datetime,
        actor: str,
        rules: TimeRules,
        unit_id: str | None = None,
        reason: str = "",
    ) -> list[WorkOrderEvent]:
        """Decide an objection: reassign to another unit (new window) or uphold (no further objection)."""
        at = self._check(Action.ARBITRATE, at)
        outcome = ArbitrationOutcome(outcome)
        if outcome is ArbitrationOutcome.REASSIGN:
            new_unit = _required("unit_id", unit_id, "the unit to reassign to")
            if new_unit == self.unit_id:
                raise InvalidArgument("unit_id", f"{new_unit} is the objecting unit; uphold instead")
            self.unit_id = new_unit
            self.objection_barred = False
            self._start_clock(DeadlineKind.OBJECTION, at, rules)
        else:
            if unit_id not in (None, "", self.unit_id):
                raise InvalidArgument("unit_id", "an upheld assignment stays with the same unit")
            self.objection_barred = True
            self._stop_clock(DeadlineKind.OBJECTION)
        note = f"{outcome.value}: {reason}" if reason else outcome.value
        return [self._changed(Action.ARBITRATE, at, actor, note, target=self.unit_id)]

    def request_extension(self, *, at: datetime, actor: str, reason: str) -> list[WorkOrderEvent]:
        """延期申请: once per work order, with a reason."""
        at = self._check(Action.REQUEST_EXTENSION, at)
        reason = _required("reason", reason, "the reason for the extension")
        if self.extension_requested:
            raise FailedPrecondition("an extension may be requested only once", self.state)
        self.extension_requested = True
        self.extension_pending = True
        return [self._changed(Action.REQUEST_EXTENSION, at, actor, reason)]

    def approve_extension(
        self, *, days: int, at: datetime, actor: str, rules: TimeRules, reason: str = ""
    ) -> list[WorkOrderEvent]:
        """Lengthen the handling limit by ``days`` (in the limit's own unit), at most the policy's maximum."""
        at = self._check(Action.APPROVE_EXTENSION, at)
        if not self.extension_pending:
            raise FailedPrecondition("no extension request is pending", self.state)
        limit = rules.policy.settle_extension_max_days
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= limit:
            raise InvalidArgument("days", f"an extension is 1 to {limit} days, got {days!r}")
        self.extension_pending = False
        self.extension_days = days
        self._recompute(self.handling_kind, rules)
        return [self._changed(Action.APPROVE_EXTENSION, at, actor, reason or f"+{days} days")]

    def reject_extension(self, *, at: datetime, actor: str, reason: str = "") -> list[WorkOrderEvent]:
        """The request is refused: the deadline stays, and the one request has been used."""
        at = self._check(Action.REJECT_EXTENSION, at)
        if not self.extension_pending:
            raise FailedPrecondition("no extension request is pending", self.state)
        self.extension_pending = False
        return [self._changed(Action.REJECT_EXTENSION, at, actor, reason)]

    def reply(
        self,
        *,
        text: str,
        at: datetime,
        actor: str,
        rules: TimeRules,
        attachments: Sequence[str] = (),
    ) -> list[WorkOrderEvent]:
        """答复: the handling deadline is met; the citizen's review window opens."""
        at = self._check(Action.REPLY, at)
        text = _required("text", text, "the reply text")
        refs = tuple(attachments)
        for i, ref in enumerate(refs):
            if not isinstance(ref, str) or not ref.strip():
                raise InvalidArgument(f"attachments[{i}]", "an attachment reference must be non-empty")
        self._stop_all_clocks(at)
        # Having answered, the unit has taken the matter on: a redo after 退回重办 cannot be objected to.
        self._stop_clock(DeadlineKind.OBJECTION)
        self.extension_pending = False
        self.reply_text, self.reply_attachments, self.replied_at = text, refs, at
        self._start_clock(DeadlineKind.REVIEW_REQUEST, at, rules)
        changed = replace(self._changed(Action.REPLY, at, actor, ""), reply_text=text)
        reply = ReplyGiven(self.id, self.case_id, self.unit_id, text, refs, at)
        return [changed, reply]

    def close(self, *, at: datetime, actor: str, reason: str = "") -> list[WorkOrderEvent]:
        """办结: after the reply (satisfied, or no rating in time); the review window stays open."""
        at = self._check(Action.CLOSE, at)
        self._stop_all_clocks(at)
        return [self._changed(Action.CLOSE, at, actor, reason)]

    def reopen(self, *, at: datetime, actor: str, rules: TimeRules, reason: str) -> list[WorkOrderEvent]:
        """退回重办 on an unsatisfied evaluation, once; the redo gets a fresh handling limit from now."""
        at = self._check(Action.REOPEN, at)
        reason = _required("reason", reason, "the reason for reopening")
        if self.reopen_count >= 1:
            raise FailedPrecondition(
                "a work order is reopened only once (退回重办); the citizen may ask for a review (复查)",
                self.state,
            )
        self.reopen_count += 1
        self._stop_clock(DeadlineKind.REVIEW_REQUEST)
        self.extension_days = 0
        self._start_clock(self.handling_kind, at, rules)
        return [self._changed(Action.REOPEN, at, actor, reason)]

    def review(self, *, at: datetime, actor: str, rules: TimeRules, reason: str = "") -> list[WorkOrderEvent]:
        """复查: asked within the review window after the reply, once; decided within its own limit."""
        at = self._check(Action.REVIEW, at)
        if self.reviewed:
            raise FailedPrecondition("this work order has already been reviewed (复查)", self.state)
        window = self.windows.get(DeadlineKind.REVIEW_REQUEST)
        if window is None or at > window:
            closed = "" if window is None else f" at {window.isoformat()}"
            raise FailedPrecondition(f"the review window closed{closed} (30 days after the reply)", self.state)
        self.reviewed = True
        self._stop_clock(DeadlineKind.REVIEW_REQUEST)
        self._start_clock(DeadlineKind.REVIEW_DECISION, at, rules)
        return [self._changed(Action.REVIEW, at, actor, reason)]

    def withdraw(self, *, at: datetime, actor: str, reason: str = "") -> list[WorkOrderEvent]:
        at = self._check(Action.WITHDRAW, at)
        self._stop_all_clocks(at)
        self.windows.clear()
        return [self._changed(Action.WITHDRAW, at, actor, reason)]

    def hold_for_leader(
        self, *, class_id: str, note: str, unit_id: str | None, at: datetime, actor: str, rules: TimeRules
    ) -> list[WorkOrderChanged]:
        """领导批转: the case waits in a leader's queue; the ``instruct`` clock runs. Not a transition."""
        if self.state is not State.REGISTERED:
            raise FailedPrecondition("only a case not yet accepted waits for a leader's instruction", self.state)
        at = to_utc(at)
        self.leader_class, self.leader_unit = class_id, unit_id
        self._start_clock(DeadlineKind.INSTRUCT, at, rules)
        return [self._noted(LEADER_HOLD, at=at, actor=actor, note=note)]

    def instruct(self, *, leader_name: str, text: str, at: datetime, actor: str) -> list[WorkOrderChanged]:
        """The leader's instruction (批示) is recorded: the queue's clock stops and handling may go on."""
        if not self.awaiting_instruction:
            why = "already instructed" if self.instruction is not None else "not in a leader's queue"
            raise FailedPrecondition(f"work order {self.id} is {why}", self.state)
        at = to_utc(at)
        self.instruction = Instruction(leader_name, text, at, actor)
        self._stop_clock(DeadlineKind.INSTRUCT)
        changed = self._noted(INSTRUCT, at=at, actor=actor, note=f"领导批示 ({leader_name}): {text}")
        return [replace(changed, leader_name=leader_name)]

    def request_assist(
        self, unit_ids: Sequence[str], *, at: datetime, actor: str, rules: TimeRules, request: str
    ) -> list[WorkOrderChanged]:
        """主办/协办: the lead unit (``unit_id``) asks assisting units for their part, each within the
        ``assist`` limit from now; the earliest unanswered one is the work order's ``assist`` deadline,
        warned, chased and supervised by the sweep like any duty. Not a transition."""
        at = to_utc(at)
        if self.state not in ASSIST_STATES:
            raise FailedPrecondition(
                f"cannot ask assisting units of a work order in state {self.state.value}", self.state
            )
        request = _required("request", request, "what the assisting units must contribute (协办事项)")
        if not unit_ids:
            raise InvalidArgument("unit_ids", "name at least one assisting unit")
        wanted: list[str] = []
        for i, raw in enumerate(unit_ids):
            unit = (raw or "").strip()
            if not unit:
                raise InvalidArgument(f"unit_ids[{i}]", "must not be empty")
            if unit == self.unit_id:
                raise InvalidArgument(f"unit_ids[{i}]", f"{unit} is the lead unit (主办) of this work order")
            if unit in wanted:
                raise InvalidArgument(f"unit_ids[{i}]", f"{unit} is named twice")
            known = self.assists.get(unit)
            if known is not None and known.pending:
                raise InvalidArgument(f"unit_ids[{i}]", f"{unit} was already asked and has not answered yet")
            wanted.append(unit)
        self._check_assist_shorter(at, rules)
        events: list[WorkOrderChanged] = []
        for unit in wanted:
            due = rules.deadline(DeadlineKind.ASSIST, at, tier=self.tier, category=self.category, paused=self.pauses)
            self.assists[unit] = Assist(unit, at, due)
            note = f"协办 {unit}: {request} (answer due {china_date(due).isoformat()})"
            events.append(replace(self._noted(ASSIST_REQUEST, at=at, actor=actor, note=note), assisting_unit_id=unit))
        self._restart_assist_clock(rules)
        return events

    def _check_assist_shorter(self, at: datetime, rules: TimeRules) -> None:
        """An assisting unit's limit must be shorter than the lead unit's own handling limit (settle or
        the 12345 class), both counted from now on the node's calendar: otherwise its part would come
        after the lead must have answered. INVALID_ARGUMENT on ``unit_ids`` (nobody is asked)."""
        lead = next((k for k in (*sorted(HOTLINE_KINDS), DeadlineKind.SETTLE) if k in self.deadlines), None)
        if lead is None:
            return
        assist_due = rules.deadline(DeadlineKind.ASSIST, at, tier=self.tier, category=self.category)
        if assist_due >= rules.deadline(lead, at, tier=self.tier, category=self.category):
            assist_limit = rules.policy.limit_for(DeadlineKind.ASSIST, tier=self.tier, category=self.category)
            lead_limit = rules.policy.limit_for(lead, tier=self.tier, category=self.category)
            raise InvalidArgument(
                "unit_ids",
                f"the assist limit ({assist_limit}) is not shorter than the lead unit's {lead.value} limit "
                f"({lead_limit}): an assisting unit would answer after the lead must; shorten limits.assist",
            )

    def answer_assist(
        self, unit_id: str, *, at: datetime, actor: str, rules: TimeRules, text: str
    ) -> list[WorkOrderChanged]:
        """An assisting unit answers the lead (协办意见); late when after its own deadline. Not a transition."""
        at = to_utc(at)
        unit = _required("unit_id", unit_id, "the assisting unit")
        text = _required("text", text, "the assisting unit's answer (协办意见)")
        assist = self.assists.get(unit)
        if assist is None:
            raise InvalidArgument("unit_id", f"{unit} was not asked to assist on this work order")
        if not assist.pending:
            raise FailedPrecondition(f"{unit} already answered on {assist.answered_at}", self.state)
        if self.state not in ASSIST_STATES:
            raise FailedPrecondition(
                f"the lead's work order is {self.state.value}: no answer is expected now", self.state
            )
        assist.answered_at, assist.answer = at, text
        assist.late = assist.late or at > assist.due
        label = ASSIST_LATE_ANSWER if assist.late else ASSIST_ANSWER
        self._restart_assist_clock(rules)
        note = f"协办 {unit} answered{' late' if assist.late else ''}: {text}"
        return [replace(self._noted(label, at=at, actor=actor, note=note), assisting_unit_id=unit)]

    def late_assists(self, deadline: datetime) -> tuple[str, ...]:
        """Unanswered assisting units due by ``deadline`` (the assist deadline the sweep chases)."""
        return tuple(sorted(a.unit_id for a in self.assists.values() if a.pending and a.due <= deadline))

    def _restart_assist_clock(self, rules: TimeRules) -> None:
        pending = [a for a in self.assists.values() if a.pending]
        if not pending:
            self._stop_clock(DeadlineKind.ASSIST)
            return
        first = min(pending, key=lambda a: (a.due, a.requested_at))
        self._start_clock(DeadlineKind.ASSIST, first.requested_at, rules)

    def merge(self, *, into_case_id: str, at: datetime, actor: str, reason: str = "") -> list[WorkOrderEvent]:
        """并单: this case continues inside another one until the merge is undone.

        The clocks are kept, not stopped: a MERGED work order is never swept (terminal), and an undo
        (``unmerge``) puts the case back on the deadlines it had, the time merged counted as handled.
        """
        before = self.state
        at = self._check(Action.MERGE, at)
        into = _required("into_case_id", into_case_id, "the case to merge into")
        if into == self.case_id:
            raise InvalidArgument("into_case_id", "a case cannot be merged into itself")
        self.merged_into = into
        self.merged_from = before
        return [replace(self._changed(Action.MERGE, at, actor, reason, target=into), main_case_id=into)]

    def unmerge(self, *, at: datetime, actor: str, reason: str) -> list[WorkOrderEvent]:
        """The merge is undone: the work order goes back to the state it was merged from."""
        at = self._check(Action.UNMERGE, at)
        reason = _required("reason", reason, "the reason for undoing the merge")
        back = self.merged_from
        if back is None:
            raise FailedPrecondition(
                "this work order has no state to go back to (merged before undo existed)", self.state
            )
        main = self.merged_into or ""
        self.merged_into = None
        self.merged_from = None
        changed = self._changed(Action.UNMERGE, at, actor, reason, target=main, to_state=back)
        return [replace(changed, main_case_id=main)]

    def merged_in(self, case_ids: Sequence[str], *, at: datetime, actor: str, reason: str) -> list[WorkOrderChanged]:
        """The main case's history names the cases merged into it. Not a transition."""
        note = f"并单: {', '.join(case_ids)} merged into this case ({reason})"
        return self.merge_noted(MERGE_IN, note, at=at, actor=actor)

    def merge_noted(self, label: str, note: str, *, at: datetime, actor: str) -> list[WorkOrderChanged]:
        """A merge-related entry in the main case's history (``merge_in``, ``merge_out``). Not a transition."""
        return [self._noted(label, at=to_utc(at), actor=actor, note=note)]

    def follow_main(self, main: WorkOrderChanged) -> list[WorkOrderChanged]:
        """A merged case follows its main case: one history entry and event per change of the main case.

        The event carries the main case's new state and reply (so the merged citizen's tracking shows
        them and the citizen can rate the reply); this work order's own state stays MERGED.
        """
        if self.state is not State.MERGED or self.merged_into != main.case_id:
            return []
        label = f"{FOLLOW_MAIN}{main.action}"
        self.history.append(HistoryEntry(main.at, main.actor, label, self.state, self.state, f"主件 {main.case_id}"))
        self.version += 1
        return [
            WorkOrderChanged(
                work_order_id=self.id,
                case_id=self.case_id,
                action=label,
                from_state=self.state,
                to_state=main.to_state,
                actor=main.actor,
                at=main.at,
                reason=f"主件 {main.case_id}: {main.action}",
                unit_id=main.unit_id,
                deadlines=main.deadlines,
                reply_text=main.reply_text,
                main_case_id=main.case_id,
            )
        ]

    def transfer(self, *, to_node: str, at: datetime, actor: str, reason: str = "") -> list[WorkOrderEvent]:
        """A hand-off to another node is in flight; forwarding meets the assign deadline."""
        at = self._check(Action.TRANSFER, at)
        to = _required("to_node", to_node, "the node to transfer to")
        if to == self.node:
            raise InvalidArgument("to_node", "a work order cannot be transferred to its own node")
        self._stop_all_clocks(at)
        self.windows.clear()
        self.transferred_to = to
        return [self._changed(Action.TRANSFER, at, actor, reason, target=to)]

    def escalate_up(self, *, to_node: str, at: datetime, actor: str, reason: str) -> list[WorkOrderEvent]:
        """上报: ownership moves to the tier above; a transfer whose history says ``escalate_up``.

        Legal wherever a transfer is (every open state); the caller gives ``to_node`` (the parent).
        """
        at = self._check(Action.TRANSFER, at)
        to = _required("to_node", to_node, "the node to escalate to")
        reason = _required("reason", reason, "the reason for escalating")
        if to == self.node:
            raise InvalidArgument("to_node", "a work order cannot be escalated to its own node")
        self._stop_all_clocks(at)
        self._stop_clock(DeadlineKind.OBJECTION)
        self.windows.clear()
        self.extension_pending = False
        self.transferred_to = to
        return [self._changed(Action.TRANSFER, at, actor, reason, target=to, label=ESCALATE_UP)]

    def take_back(self, *, at: datetime, actor: str, rules: TimeRules, reason: str) -> list[WorkOrderEvent]:
        """The receiving node returned the hand-off (退回): this node must route it again."""
        at = self._check(Action.TAKE_BACK, at)
        reason = _required("reason", reason, "the reason the hand-off came back")
        self.transferred_to = None
        self.unit_id = None
        self._start_clock(DeadlineKind.ASSIGN, at, rules)
        return [self._changed(Action.TAKE_BACK, at, actor, reason)]

    def pause(self, *, at: datetime, actor: str, reason: str) -> list[WorkOrderEvent]:
        """Stop the clocks (补充材料, 听证); nothing is chased while paused."""
        at = self._check(Action.PAUSE, at)
        reason = _required("reason", reason, "the reason for pausing the clock")
        if self.paused_since is not None:
            raise FailedPrecondition(f"the clock is already paused since {self.paused_since.isoformat()}", self.state)
        self.paused_since = at
        return [self._changed(Action.PAUSE, at, actor, reason)]

    def resume(self, *, at: datetime, actor: str, rules: TimeRules, reason: str = "") -> list[WorkOrderEvent]:
        """Restart the clocks; every running deadline moves by the paused time."""
        at = self._check(Action.RESUME, at)
        if self.paused_since is None:
            raise FailedPrecondition("the clock is not paused", self.state)
        if at < self.paused_since:
            raise InvalidArgument("at", "resume is earlier than the pause")
        self._close_pause(at)
        for kind in list(self.deadlines):
            self._recompute(DeadlineKind(kind), rules)
        return [self._changed(Action.RESUME, at, actor, reason)]

    # -- sweep bookkeeping ---------------------------------------------------------------------

    def record_sweep(
        self, action: SweepAction, *, at: datetime | None = None, actor: str = "system"
    ) -> list[WorkOrderEvent]:
        """Remember that a sweep stage fired (and the earlier ones with it), so it never fires twice.

        An action computed against a deadline that has since moved or been met is dropped.
        Not a state transition, so not in ``TRANSITIONS``; it does go into the history.
        """
        if action.work_order_id != self.id or self.deadlines.get(action.kind) != action.deadline:
            return []
        for stage in _STAGE_ORDER[: _STAGE_ORDER.index(action.stage) + 1]:
            self.fired.add((action.kind, stage.value))
        owing: tuple[str, ...] = ()
        if action.kind == DeadlineKind.ASSIST:
            owing = self.late_assists(action.deadline)
            if action.stage is not Stage.WARNING:
                for unit in owing:
                    self.assists[unit].late = True  # chased: counted late whenever it answers
        at = to_utc(at if at is not None else action.boundary)
        self.history.append(HistoryEntry(at, actor, f"{action.stage.value}:{action.kind}", self.state, self.state))
        self.version += 1
        return [
            DeadlineStageReached(
                work_order_id=self.id,
                case_id=self.case_id,
                node=self.node,
                unit_id=self.unit_id,
                kind=action.kind,
                stage=action.stage,
                deadline=action.deadline,
                at=at,
                unit_ids=owing,
            )
        ]

    def recompute(self, rules: TimeRules) -> list[str]:
        """Recompute every running clock from its start (a calendar year was loaded); returns kinds that moved.

        Not a transition: the caller records it (history and event) when something moved.
        """
        before = {**self.deadlines, **self.windows}
        for kind in list(self.clock_starts):
            if kind in self.deadlines or kind in self.windows:
                self._recompute(DeadlineKind(kind), rules)
        after = {**self.deadlines, **self.windows}
        return sorted(k for k in after if before.get(k) != after[k])

    def calendar_loaded(
        self, rules: TimeRules, *, at: datetime, years: Iterable[int], provisional: Iterable[str], actor: str = "system"
    ) -> list[WorkOrderChanged]:
        """An official calendar year was loaded: every running clock is counted again from its start.

        One history entry (and event) per deadline that moved, naming the old and the new day, so
        the case's history shows why a due date changed; when none moved, one entry says that the
        provisional dates (``provisional``: the kinds counted Monday-Friday) now stand as official.
        Not a transition: the state stays.
        """
        at = to_utc(at)
        label = "official calendar for " + ", ".join(str(y) for y in sorted(set(years))) + " loaded"
        before = {**self.deadlines, **self.windows}
        moved = self.recompute(rules)
        after = {**self.deadlines, **self.windows}
        notes = [
            f"{kind} due {china_date(before[kind]).isoformat()} → {china_date(after[kind]).isoformat()} ({label})"
            for kind in moved
            if kind in before
        ]
        if not notes:
            kinds = ", ".join(f"{k} due {china_date(after[k]).isoformat()}" for k in sorted(provisional) if k in after)
            notes = [f"{kinds or 'deadlines'} unchanged, no longer provisional ({label})"]
        return [self._noted(RECOMPUTE_DEADLINES, at=at, actor=actor, note=note) for note in notes]

    def visit_held(self, *, at: datetime, actor: str, note: str) -> list[WorkOrderChanged]:
        """A leader received the citizen by video (视频接访): the outcome joins the history. Not a transition."""
        return [self._noted(VISIT_OUTCOME, at=to_utc(at), actor=actor, note=note)]

    def consulted(self, *, at: datetime, actor: str, label: str, note: str) -> list[WorkOrderChanged]:
        """A remote consultation (远程会商) about the case was booked or held: the history says when,
        with which units, and its minutes. Not a transition."""
        if label not in CONSULTATION_LABELS:
            raise ValueError(f"not a consultation label: {label}")
        return [self._noted(label, at=to_utc(at), actor=actor, note=note)]

    def _noted(self, label: str, *, at: datetime, actor: str, note: str) -> WorkOrderChanged:
        """A history entry (and its event) that records a fact about the case and keeps the state."""
        self.history.append(HistoryEntry(at, actor, label, self.state, self.state, note))
        self.version += 1
        return WorkOrderChanged(
            work_order_id=self.id,
            case_id=self.case_id,
            action=label,
            from_state=self.state,
            to_state=self.state,
            actor=actor,
            at=at,
            reason=note,
            unit_id=self.unit_id,
            deadlines=self._deadline_list(),
        )

    def limit_of(self, kind: str, policy: TimeLimitPolicy) -> Limit:
        """The limit behind one of this work order's deadlines, extension included."""
        limit = policy.limit_for(DeadlineKind(kind), tier=self.tier, category=self.category)
        if kind == self.handling_kind and self.extension_days:
            return Limit(limit.days + self.extension_days, limit.count)
        return limit

    # -- internals -----------------------------------------------------------------------------

    def _check(self, action: Action, at: datetime) -> datetime:
        """The table lookup every action starts with; returns ``at`` as UTC."""
        if (self.state, action) not in TRANSITIONS:
            raise FailedPrecondition(f"cannot {action.value} a work order in state {self.state.value}", self.state)
        if action in _HELD_ACTIONS and self.awaiting_instruction:
            raise FailedPrecondition(
                f"cannot {action.value}: the case waits for the leader's instruction"
                f" (领导批示, class {self.leader_class})",
                self.state,
            )
        return to_utc(at)

    def _changed(
        self,
        action: Action,
        at: datetime,
        actor: str,
        reason: str,
        *,
        target: str | None = None,
        label: str | None = None,
        to_state: State | None = None,
    ) -> WorkOrderChanged:
        """``label`` names the step in the history and the event when it is a kind of ``action`` (escalate_up);
        ``to_state`` overrides the table's target where the table names a usual one (unmerge)."""
        before = self.state
        after = to_state or TRANSITIONS[(before, action)]
        if after in TERMINAL_STATES or after is State.REPLIED:
            self._close_pause(at)
        self.state = after
        self.history.append(HistoryEntry(at, actor, label or action.value, before, after, reason))
        self.version += 1
        return WorkOrderChanged(
            work_order_id=self.id,
            case_id=self.case_id,
            action=label or action,  # the label travels as the event's action text
            from_state=before,
            to_state=after,
            actor=actor,
            at=at,
            reason=reason,
            unit_id=self.unit_id,
            deadlines=self._deadline_list(),
            target=target,
        )

    def _deadline_list(self) -> DeadlineList:
        return tuple(sorted({**self.deadlines, **self.windows}.items()))

    def _start_clock(self, kind: DeadlineKind, at: datetime, rules: TimeRules) -> None:
        self.clock_starts[kind] = at
        self._recompute(kind, rules)

    def _recompute(self, kind: DeadlineKind, rules: TimeRules) -> None:
        start = self.clock_starts[kind]
        windows = kind in _WINDOW_KINDS
        due = rules.deadline(
            kind,
            start,
            tier=self.tier,
            category=self.category,
            # Rights (objection, review request) run regardless of pauses; duties stand still.
            paused=() if windows else self.pauses,
            extra_days=self.extension_days if kind == self.handling_kind else 0,
        )
        target = self.windows if windows else self.deadlines
        if target.get(kind) != due:
            # A moved deadline is a new deadline: its warning, chase and supervision may fire again.
            self.fired = {(k, s) for (k, s) in self.fired if k != kind}
        target[kind] = due

    def _stop_clock(self, kind: DeadlineKind) -> None:
        self.deadlines.pop(kind, None)
        self.windows.pop(kind, None)
        self.clock_starts.pop(kind, None)

    def _stop_all_clocks(self, at: datetime) -> None:
        self._close_pause(at)
        for kind in list(self.deadlines):
            self._stop_clock(DeadlineKind(kind))

    def _close_pause(self, at: datetime) -> None:
        if self.paused_since is not None:
            self.pauses.append((self.paused_since, at))
            self.paused_since = None


def allowed_actions(order: WorkOrder, now: datetime | None = None) -> list[Action]:
    """The actions an operator may take on ``order`` now: the table's, less those its own rules rule out.

    The rules are the ones the action methods check (one extension request, one reopen, one review,
    the objection and review windows, a pause before a resume). With ``now`` None the windows are
    taken as open. The caller's roles are not considered: the security policy decides those.
    """
    at = to_utc(now) if now is not None else None
    out: list[Action] = []
    for state, action in TRANSITIONS:
        if state is not order.state or not _rule_allows(order, action, at):
            continue
        out.append(action)
    return out


def _rule_allows(order: WorkOrder, action: Action, at: datetime | None) -> bool:
    def window_open(kind: DeadlineKind) -> bool:
        window = order.windows.get(kind)
        return window is not None and (at is None or at <= window)

    if action is Action.OBJECT:
        return not order.objection_barred and window_open(DeadlineKind.OBJECTION)
    if action is Action.REQUEST_EXTENSION:
        return not order.extension_requested
    if action in (Action.APPROVE_EXTENSION, Action.REJECT_EXTENSION):
        return order.extension_pending
    if action is Action.REOPEN:
        return order.reopen_count < 1
    if action is Action.REVIEW:
        return not order.reviewed and window_open(DeadlineKind.REVIEW_REQUEST)
    if action is Action.PAUSE:
        return order.paused_since is None
    if action is Action.RESUME:
        return order.paused_since is not None
    if action is Action.UNMERGE:
        return order.merged_from is not None
    # TAKE_BACK: only the receiving node's answer takes a hand-off back.
    return action is not Action.TAKE_BACK


def sweep(
    work_orders: Iterable[WorkOrder],
    now: datetime,
    policy: TimeLimitPolicy,
    calendar: WorkingCalendar,
) -> list[SweepAction]:
    """Decide, without changing anything, which warning/chase/supervision stages are due at ``now``.

    Stage boundaries per deadline: warning at ``warning_at`` (end of the day ``lead`` days before
    the due day), chase at the deadline itself (so it lands the day after the due day), supervision
    ``supervision_delay`` after the due day. A stage is due when ``now >= boundary`` and it has not
    fired for this deadline; a warning is skipped when the chase is due too (it would arrive late
    and say the wrong thing). Paused work orders are skipped: their deadlines are about to move.
    """
    now = to_utc(now)
    actions: list[SweepAction] = []
    for order in work_orders:
        if order.state in TERMINAL_STATES or order.paused_since is not None:
            continue
        for kind, deadline in sorted(order.deadlines.items()):
            boundaries: dict[Stage, datetime | None] = {
                Stage.WARNING: warning_at(deadline, order.limit_of(kind, policy), policy, calendar),
                Stage.CHASE: deadline,
                Stage.SUPERVISION: supervision_at(deadline, policy, calendar),
            }
            due = [
                stage
                for stage, boundary in boundaries.items()
                if boundary is not None and now >= boundary and (kind, stage.value) not in order.fired
            ]
            if Stage.CHASE in due and Stage.WARNING in due:
                due.remove(Stage.WARNING)
            for stage in due:
                boundary = boundaries[stage]
                assert boundary is not None
                actions.append(
                    SweepAction(
                        work_order_id=order.id,
                        case_id=order.case_id,
                        node=order.node,
                        unit_id=order.unit_id,
                        kind=kind,
                        stage=stage,
                        deadline=deadline,
                        boundary=boundary,
                    )
                )
    return actions
