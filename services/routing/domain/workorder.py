"""The work order (工单) aggregate: register a case's handling at a node, and the office's, the units'
and the citizen's actions on it; a leader's hold and instruction; the facts noted in its history."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from services.common.clock import to_utc
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.regions import Tier
from services.routing.domain.cooperation import CooperationSteps
from services.routing.domain.events import (
    HistoryEntry,
    Instruction,
    ReplyGiven,
    WorkOrderChanged,
    WorkOrderCreated,
    WorkOrderEvent,
    required,
)
from services.routing.domain.lifecycle import (
    CONSULTATION_LABELS,
    HANDLING_KINDS,
    INSTRUCT,
    LEADER_HOLD,
    VISIT_OUTCOME,
    Action,
    ArbitrationOutcome,
    State,
)
from services.routing.domain.timelimits import DeadlineKind, TimeRules


@dataclass
class WorkOrder(CooperationSteps):
    """One case's handling at one node. Build new ones with ``WorkOrder.register``."""

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
        if handling_kind not in HANDLING_KINDS:
            raise InvalidArgument("handling_kind", f"{handling_kind} is not settle or a hotline class")
        at = to_utc(at)
        order = cls(
            id=required("id", id, "a work order id"),
            case_id=required("case_id", case_id, "a case id"),
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

    def accept(self, *, at: datetime, actor: str, rules: TimeRules, reason: str = "") -> list[WorkOrderEvent]:
        """受理: the acceptance notice is given now and the handling clock starts (条例: 自受理之日起)."""
        at = self._check(Action.ACCEPT, at)
        self.deadlines.pop(DeadlineKind.ACCEPT_NOTICE, None)
        self._start_clock(self.handling_kind, at, rules)
        return [self._changed(Action.ACCEPT, at, actor, reason)]

    def refuse(self, *, at: datetime, actor: str, reason: str) -> list[WorkOrderEvent]:
        """不予受理: needs the reason that goes into the written notice."""
        at = self._check(Action.REFUSE, at)
        reason = required("reason", reason, "the reason for refusing (不予受理)")
        self._stop_all_clocks(at)
        return [self._changed(Action.REFUSE, at, actor, reason)]

    def assign(
        self, *, unit_id: str, at: datetime, actor: str, rules: TimeRules, reason: str = ""
    ) -> list[WorkOrderEvent]:
        """交办 to a unit: the assign deadline is met and the unit's objection window opens."""
        at = self._check(Action.ASSIGN, at)
        unit_id = required("unit_id", unit_id, "the unit to assign to")
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
        reason = required("reason", reason, "the reason for the objection")
        if self.objection_barred:
            raise FailedPrecondition("the unit may not object again: an arbitration upheld the assignment", self.state)
        window = self.windows.get(DeadlineKind.OBJECTION)
        if window is None:
            raise FailedPrecondition("no objection window is open for this work order", self.state)
        if at > window:
            raise FailedPrecondition(
                f"the objection window closed at {window.isoformat()} (5 working days after assignment)", self.state
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
            new_unit = required("unit_id", unit_id, "the unit to reassign to")
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
        reason = required("reason", reason, "the reason for the extension")
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
        self, *, text: str, at: datetime, actor: str, rules: TimeRules, attachments: Sequence[str] = ()
    ) -> list[WorkOrderEvent]:
        """答复: the handling deadline is met; the citizen's review window opens."""
        at = self._check(Action.REPLY, at)
        text = required("text", text, "the reply text")
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
        reason = required("reason", reason, "the reason for reopening")
        if self.reopen_count >= 1:
            raise FailedPrecondition(
                "a work order is reopened only once (退回重办); the citizen may ask for a review (复查)", self.state
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

    def pause(self, *, at: datetime, actor: str, reason: str) -> list[WorkOrderEvent]:
        """Stop the clocks (补充材料, 听证); nothing is chased while paused."""
        at = self._check(Action.PAUSE, at)
        reason = required("reason", reason, "the reason for pausing the clock")
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

    def visit_held(self, *, at: datetime, actor: str, note: str) -> list[WorkOrderChanged]:
        """A leader received the citizen by video (视频接访): the outcome joins the history. Not a transition."""
        return [self._noted(VISIT_OUTCOME, at=to_utc(at), actor=actor, note=note)]

    def consulted(self, *, at: datetime, actor: str, label: str, note: str) -> list[WorkOrderChanged]:
        """A remote consultation (远程会商) about the case was booked or held: the history says when,
        with which units, and its minutes. Not a transition."""
        if label not in CONSULTATION_LABELS:
            raise ValueError(f"not a consultation label: {label}")
        return [self._noted(label, at=to_utc(at), actor=actor, note=note)]
