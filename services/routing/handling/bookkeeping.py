"""What every use case shares: the derived columns and the provisional note (``refresh``), saving and
emitting with the cases merged in following (``persist``), loading a work order locked, and the
checks of the acting operator and unit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime

from services.common.errors import Conflict, InvalidArgument, NotFound, PermissionDenied, StaleOwner
from services.common.timeutil import china_date, to_utc
from services.routing.domain import (
    MERGE_IN,
    MERGE_OUT,
    OPEN_STATES,
    Stage,
    State,
    WorkOrder,
    WorkOrderChanged,
    WorkOrderEvent,
)
from services.routing.domain.timelimits import TimeRules, supervision_at, warning_at
from services.routing.handling.ports import (
    Routing,
    RoutingEvent,
    RoutingUnitOfWork,
    StoredWorkOrder,
    UnitOfWorkFactory,
    work_order_id_for,
)


def refresh(stored: StoredWorkOrder, routing: Routing, at: datetime, *, before: tuple[str, ...]) -> None:
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


def persist(
    uow: RoutingUnitOfWork, stored: StoredWorkOrder, routing: Routing, events: Sequence[RoutingEvent], at: datetime
) -> None:
    before = stored.provisional
    refresh(stored, routing, at, before=before)
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
            refresh(follower, routing, at, before=follower.provisional)
            uow.save(follower)
            uow.emit(case_id, followed)


def load(uow: RoutingUnitOfWork, work_order_id: str, expected_version: int) -> StoredWorkOrder:
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


def checked_actor(actor: str) -> str:
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
    who = checked_actor(actor)
    now = to_utc(now)
    with uow_factory() as uow:
        stored = load(uow, work_order_id, expected_version)
        refuse_if_handed_off(uow, stored)
        events = step(stored, now, who)
        persist(uow, stored, routing, events, now)
        uow.commit()
    return stored


def refuse_if_handed_off(uow: RoutingUnitOfWork, stored: StoredWorkOrder) -> None:
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


def changing(uow: RoutingUnitOfWork, case_id: str) -> StoredWorkOrder | None:
    """This node's work order for the case, locked until commit: for an event or command consumer that changes it.

    Consumers run beside the RPCs (which load with ``load``) and the sweep. Read without the lock on
    PostgreSQL (read committed), a consumer acted on the state from before a concurrent RPC's commit
    and then wrote it back over that commit: a visit's outcome recorded while the unit replied undid
    the reply (the work order EXTENDED again) and numbered its EXTENDED event after the reply's, so
    the registering node's TrackCase went back to EXTENDED. SQLite's BEGIN IMMEDIATE serialises anyway.
    """
    return uow.for_case(case_id, for_update=True)


def lead_only(stored: StoredWorkOrder, acting_unit: str, what: str) -> None:
    """主办/协办: only the lead unit (the work order's unit) does ``what``; the office may act for it."""
    if acting_unit and acting_unit != stored.order.unit_id:
        raise PermissionDenied(
            f"only the lead unit {stored.order.unit_id or '(none)'} {what}; {acting_unit} is not the lead of "
            f"work order {stored.order.id}"
        )
