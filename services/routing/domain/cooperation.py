"""What a work order does with other units, cases and nodes: assisting units (主办/协办), merged cases
(并单) and hand-offs (交办/上报/退回)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from services.common.clock import china_date, to_utc
from services.common.errors import FailedPrecondition, InvalidArgument
from services.routing.domain.clocks import WorkOrderClocks
from services.routing.domain.events import Assist, HistoryEntry, WorkOrderChanged, WorkOrderEvent, required
from services.routing.domain.lifecycle import (
    ASSIST_ANSWER,
    ASSIST_LATE_ANSWER,
    ASSIST_REQUEST,
    ASSIST_STATES,
    ESCALATE_UP,
    FOLLOW_MAIN,
    HOTLINE_KINDS,
    MERGE_IN,
    Action,
    State,
)
from services.routing.domain.timelimits import DeadlineKind, TimeRules


class CooperationSteps(WorkOrderClocks):
    """协办, 并单 and hand-offs of ``WorkOrder``."""

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
        request = required("request", request, "what the assisting units must contribute (协办事项)")
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
        unit = required("unit_id", unit_id, "the assisting unit")
        text = required("text", text, "the assisting unit's answer (协办意见)")
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
        into = required("into_case_id", into_case_id, "the case to merge into")
        if into == self.case_id:
            raise InvalidArgument("into_case_id", "a case cannot be merged into itself")
        self.merged_into = into
        self.merged_from = before
        return [replace(self._changed(Action.MERGE, at, actor, reason, target=into), main_case_id=into)]

    def unmerge(self, *, at: datetime, actor: str, reason: str) -> list[WorkOrderEvent]:
        """The merge is undone: the work order goes back to the state it was merged from."""
        at = self._check(Action.UNMERGE, at)
        reason = required("reason", reason, "the reason for undoing the merge")
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
        to = required("to_node", to_node, "the node to transfer to")
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
        to = required("to_node", to_node, "the node to escalate to")
        reason = required("reason", reason, "the reason for escalating")
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
        reason = required("reason", reason, "the reason the hand-off came back")
        self.transferred_to = None
        self.unit_id = None
        self._start_clock(DeadlineKind.ASSIGN, at, rules)
        return [self._changed(Action.TAKE_BACK, at, actor, reason)]
