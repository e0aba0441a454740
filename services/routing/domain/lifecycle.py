"""The work order's lifecycle: its states and actions, the labels of the history entries that are not
transitions, and the explicit ``TRANSITIONS`` table every state change goes through (Signalen style).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from services.routing.domain.timelimits import DeadlineKind


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
HELD_ACTIONS = frozenset({Action.ACCEPT, Action.REFUSE, Action.ASSIGN, Action.START, Action.TRANSFER})


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


HANDLING_KINDS = HOTLINE_KINDS | {DeadlineKind.SETTLE}


WINDOW_KINDS = frozenset({DeadlineKind.OBJECTION, DeadlineKind.REVIEW_REQUEST})


class ArbitrationOutcome(StrEnum):
    REASSIGN = "reassign"  # 改派: another unit gets it, with a fresh objection window
    UPHOLD = "uphold"  # the assignment stands; the unit may not object again


class Stage(StrEnum):
    """Escalation stages of a missed or nearing deadline, in order (proto ``DeadlineWarning.stage``)."""

    WARNING = "warning"  # 预警, before the deadline
    CHASE = "chase"  # 催办, once the deadline has passed
    SUPERVISION = "supervision"  # 督办 by the tier above, a configurable delay after the deadline


STAGE_ORDER = (Stage.WARNING, Stage.CHASE, Stage.SUPERVISION)
