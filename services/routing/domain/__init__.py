"""Routing's rules: the work order (工单) aggregate, its handling lifecycle, deadlines, history, the
deadline sweep, and the time limits they are counted by.

Plain domain code (cosmicpython): no database, no broker. Every state change goes through the
explicit ``TRANSITIONS`` table (Signalen style), writes a ``HistoryEntry`` and returns domain
events for the handler to put in the outbox. Anything the table does not list raises
``FailedPrecondition`` naming the action and the current state.

Deadlines come in two sorts, both computed by ``timelimits``:

* ``deadlines`` are duties (assign, accept_notice, settle or the hotline class, review_decision):
  the sweep warns before them, chases (催办) after them and asks the tier above to supervise (督办).
* ``windows`` are rights that lapse (the unit's objection window, the citizen's review window):
  checked when the right is used, never chased.

Every clock keeps its start, so pauses (waiting for the citizen, a hearing) and an approved
extension recompute the deadline from the same rule rather than patching dates.

Read in this order: ``lifecycle`` (states, actions, the ``TRANSITIONS`` table), ``events`` (history
entries and the events returned), ``clocks`` (the fields and how deadlines run), ``workorder`` (the
aggregate and its actions) with ``cooperation`` (协办, 并单, hand-offs), ``sweep`` (the due stages and
the allowed actions), ``timelimits`` (the limits per tier and category, the working-day arithmetic).
The other rule modules of routing are ``jurisdiction``, ``merging``, ``leader`` and ``evaluation``.
"""

from __future__ import annotations

from services.routing.domain.events import (
    Assist,
    DeadlineList,
    DeadlineStageReached,
    HistoryEntry,
    Instruction,
    ReplyGiven,
    SweepAction,
    WorkOrderChanged,
    WorkOrderCreated,
    WorkOrderEvent,
)
from services.routing.domain.lifecycle import (
    ACTIONS,
    ASSIST_ANSWER,
    ASSIST_LATE_ANSWER,
    ASSIST_REQUEST,
    ASSIST_STATES,
    CONSULTATION_BOOKED,
    CONSULTATION_HELD,
    CONSULTATION_LABELS,
    ESCALATE_UP,
    FOLLOW_MAIN,
    HANDLING_KINDS,
    HELD_ACTIONS,
    HOTLINE_KINDS,
    INSTRUCT,
    LEADER_HOLD,
    MERGE_IN,
    MERGE_OUT,
    OPEN_STATES,
    RECOMPUTE_DEADLINES,
    STAGE_ORDER,
    STATES,
    TERMINAL_STATES,
    TRANSITIONS,
    VISIT_OUTCOME,
    WINDOW_KINDS,
    Action,
    ArbitrationOutcome,
    Stage,
    State,
)
from services.routing.domain.sweep import allowed_actions, sweep
from services.routing.domain.workorder import WorkOrder

__all__ = [
    "ACTIONS",
    "ASSIST_ANSWER",
    "ASSIST_LATE_ANSWER",
    "ASSIST_REQUEST",
    "ASSIST_STATES",
    "CONSULTATION_BOOKED",
    "CONSULTATION_HELD",
    "CONSULTATION_LABELS",
    "ESCALATE_UP",
    "FOLLOW_MAIN",
    "HANDLING_KINDS",
    "HELD_ACTIONS",
    "HOTLINE_KINDS",
    "INSTRUCT",
    "LEADER_HOLD",
    "MERGE_IN",
    "MERGE_OUT",
    "OPEN_STATES",
    "RECOMPUTE_DEADLINES",
    "STAGE_ORDER",
    "STATES",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "VISIT_OUTCOME",
    "WINDOW_KINDS",
    "Action",
    "ArbitrationOutcome",
    "Assist",
    "DeadlineList",
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
