"""What the sweep and an operator may do now: the due warning/chase/supervision stages, the allowed actions."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from services.common.calendar import WorkingCalendar
from services.common.clock import to_utc
from services.routing.domain.events import SweepAction
from services.routing.domain.lifecycle import TERMINAL_STATES, TRANSITIONS, Action, Stage
from services.routing.domain.timelimits import DeadlineKind, TimeLimitPolicy, supervision_at, warning_at
from services.routing.domain.workorder import WorkOrder


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
    work_orders: Iterable[WorkOrder], now: datetime, policy: TimeLimitPolicy, calendar: WorkingCalendar
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
