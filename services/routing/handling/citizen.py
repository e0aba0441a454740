"""What the citizen and video do to the handling here (events and commands): ratings, 复查 requests,
withdrawals, a video reception's outcome and remote consultations in the history.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from services.common.timeutil import to_utc
from services.routing.domain import TRANSITIONS, Action, State, WorkOrder, WorkOrderChanged, WorkOrderEvent
from services.routing.handling.bookkeeping import changing, persist
from services.routing.handling.ports import RatingApplied, Routing, RoutingUnitOfWork, StoredWorkOrder


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
    stored = changing(uow, case_id)
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
    persist(uow, stored, routing, events, now)
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
    stored = changing(uow, case_id)
    if stored is None or stored.order.node != routing.node or stored.order.state is State.TRANSFERRED:
        return None
    now = to_utc(now)
    events: list[WorkOrderEvent] = list(note(stored.order, now))
    persist(uow, stored, routing, events, now)
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
    stored = changing(uow, case_id)
    if stored is None or stored.order.node != routing.node:
        return WithdrawalOutcome(applied=False, state=None)
    order = stored.order
    if (order.state, Action.WITHDRAW) not in TRANSITIONS:
        return WithdrawalOutcome(applied=False, state=order.state)
    now = to_utc(now)
    if order.state is State.MERGED:
        uow.remove_merge(case_id)  # 并单: it no longer follows its main case
    events = order.withdraw(at=now, actor="citizen", reason=reason or "withdrawn by the citizen (撤回)")
    persist(uow, stored, routing, events, now)
    return WithdrawalOutcome(applied=True, state=order.state)
