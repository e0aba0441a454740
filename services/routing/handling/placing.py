"""Placing a case that arrives here (属地管理、分级负责): registered at this node, handed down by the
parent (交办) or escalated by a child (上报); repeats counted toward the tier above's supervision.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

from services.common.timeutil import to_utc
from services.routing.domain import OPEN_STATES, State, WorkOrder, WorkOrderCreated
from services.routing.domain.timelimits import CATEGORIES, DeadlineKind, supervision_at
from services.routing.handling.bookkeeping import persist
from services.routing.handling.ports import (
    SYSTEM,
    HandedOff,
    RegisteredCase,
    Routing,
    RoutingEvent,
    RoutingUnitOfWork,
    StoredWorkOrder,
    Supervision,
    SupervisionRecorded,
    work_order_id_for,
)
from services.routing.jurisdiction import AssignUnit, HandOff, ManualQueue, decide


def handling_kind_for(case: RegisteredCase) -> DeadlineKind:
    """12345 calls run on the hotline class limits; everything else is a petition settled in 60 days."""
    if not case.channel_hotline:
        return DeadlineKind.SETTLE
    if "hotline_emergency" in case.flags:
        return DeadlineKind.HOTLINE_EMERGENCY
    if "hotline_enquiry" in case.flags:
        return DeadlineKind.HOTLINE_ENQUIRY
    return DeadlineKind.HOTLINE_COMPLAINT


def decide_escalated(case: RegisteredCase, routing: Routing) -> AssignUnit | ManualQueue:
    """上报 arriving from a child: a unit of this node by category; never handed back down toward the region."""
    if not case.category:
        return ManualQueue("the escalated case has no category: a clerk must classify it")
    if case.category not in CATEGORIES:
        return ManualQueue(f"unknown category {case.category!r}")
    unit = routing.catalogue.unit_for(case.category, case.region_code)
    if unit is None:
        return ManualQueue(f"no unit for category {case.category} in {routing.catalogue.label}")
    return AssignUnit(unit)


def on_case_arrived(
    case: RegisteredCase, uow: RoutingUnitOfWork, routing: Routing, *, now: datetime, escalated: bool = False
) -> StoredWorkOrder:
    """属地管理、分级负责: assign to this node's unit, hand down to the child node (交办), or queue for a clerk.

    Used for a registration at this node and for a hand-off arriving from the parent alike. An
    escalation (上报) from a child (``escalated``) is placed with a unit of this node by category.
    """
    wo_id = work_order_id_for(case.case_id, routing.node)
    existing = uow.get(wo_id, for_update=True)  # an escalation back rewrites it (see changing)
    if existing is not None:
        if escalated and existing.order.state is State.TRANSFERRED:
            return _escalated_back(existing, case, uow, routing, now=to_utc(now))
        return existing
    now = to_utc(now)
    uow.start_case(case.case_id, version=case.version, owner_epoch=case.owner_epoch)
    if case.case_snapshot:
        uow.keep_snapshot(case.case_id, case.case_snapshot)  # an escalation (上报) sends it on
    tier = routing.regions.get(routing.node).tier
    order, events = WorkOrder.register(
        id=wo_id,
        case_id=case.case_id,
        node=routing.node,
        tier=tier,
        at=now,
        actor=SYSTEM,
        rules=routing.rules,
        category=case.category or None,
        region_code=case.region_code or None,
        handling_kind=handling_kind_for(case),
    )
    all_events: list[RoutingEvent] = list(events)
    stored = StoredWorkOrder(order=order, created_at=now, updated_at=now)
    decision = (
        decide_escalated(case, routing)
        if escalated
        else decide(case.region_code, case.category, routing.node, routing.regions, routing.catalogue)
    )
    all_events += _placed(stored, case, decision, routing, now=now, escalated=escalated)
    # The creation event says where the work order ended up: the unit, or the manual queue.
    created = events[0]
    assert isinstance(created, WorkOrderCreated)
    all_events[0] = dataclasses.replace(
        created,
        unit_id=decision.unit_id if isinstance(decision, AssignUnit) and not order.awaiting_instruction else None,
        manual_queue=stored.manual_queue,
    )
    persist(uow, stored, routing, all_events, now)
    if case.repeat_of:
        _count_repeat(case, uow, routing, now=now)
    return stored


def _placed(
    stored: StoredWorkOrder,
    case: RegisteredCase,
    decision: AssignUnit | ManualQueue | HandOff,
    routing: Routing,
    *,
    now: datetime,
    escalated: bool,
) -> list[RoutingEvent]:
    """What placement decided, applied to the new work order: handed down, held for a leader, assigned
    to a unit, or left in the manual queue."""
    order = stored.order
    all_events: list[RoutingEvent] = []
    if isinstance(decision, HandOff):
        reason = f"交办 to {decision.to_node}: the matter's region {case.region_code} lies there"
        all_events += order.transfer(to_node=decision.to_node, at=now, actor=SYSTEM, reason=reason)
        all_events.append(
            HandedOff(
                case_id=case.case_id,
                from_node=routing.node,
                to_node=decision.to_node,
                new_owner_epoch=case.owner_epoch + 1,
                reason=reason,
                from_work_order_id=order.id,
                case_snapshot=case.case_snapshot,
                at=now,
            )
        )
    elif (held := routing.leader_classes.match(case.category, case.text)) is not None:
        # 领导批转: a matter of a leader's classes waits for the instruction before anyone handles it.
        unit = decision.unit_id if isinstance(decision, AssignUnit) else None
        note = f"领导批转: class {held.id} ({held.name}) waits for the instruction of the {held.leader}"
        all_events += order.hold_for_leader(
            class_id=held.id, note=note, unit_id=unit, at=now, actor=SYSTEM, rules=routing.rules
        )
    elif isinstance(decision, AssignUnit):
        placed = "上报 from a lower tier" if escalated else "placed by the dispatch catalogue"
        all_events += order.accept(at=now, actor=SYSTEM, rules=routing.rules, reason=f"受理: {placed}")
        all_events += order.assign(
            unit_id=decision.unit_id,
            at=now,
            actor=SYSTEM,
            rules=routing.rules,
            reason=f"派单目录 {routing.catalogue.label}",
        )
    else:
        stored.manual_reason = decision.reason
    return all_events


def _escalated_back(
    stored: StoredWorkOrder, case: RegisteredCase, uow: RoutingUnitOfWork, routing: Routing, *, now: datetime
) -> StoredWorkOrder:
    """上报 of a case this node once handed down (交办): its own transferred work order takes it back.

    Only under a newer epoch than this node knows, so a redelivered or older hand-off changes nothing.
    """
    known = uow.case_version(case.case_id)
    if known is not None and case.owner_epoch <= known[1]:
        return stored
    uow.start_case(case.case_id, version=case.version, owner_epoch=case.owner_epoch)
    if case.case_snapshot:
        uow.keep_snapshot(case.case_id, case.case_snapshot)
    order = stored.order
    events: list[RoutingEvent] = list(
        order.take_back(at=now, actor=SYSTEM, rules=routing.rules, reason="上报: the case came back up")
    )
    decision = decide_escalated(case, routing)
    if isinstance(decision, AssignUnit):
        events += order.accept(at=now, actor=SYSTEM, rules=routing.rules, reason="受理: 上报 from a lower tier")
        events += order.assign(
            unit_id=decision.unit_id,
            at=now,
            actor=SYSTEM,
            rules=routing.rules,
            reason=f"派单目录 {routing.catalogue.label}",
        )
        stored.manual_reason = ""
    else:
        stored.manual_reason = decision.reason
    persist(uow, stored, routing, events, now)
    return stored


def _count_repeat(case: RegisteredCase, uow: RoutingUnitOfWork, routing: Routing, *, now: datetime) -> None:
    """Two unresolved repeats of a case escalate to supervision by the tier above (DESIGN §3)."""
    original = uow.for_case(case.repeat_of)
    if original is not None and original.order.state not in OPEN_STATES:
        return  # resolved here: a repeat of a closed matter is a new matter, not an escalation
    count = uow.record_repeat(case.repeat_of, case.case_id)
    if count != 2:
        return
    # The supervision is about the original case when this node knows it, else about the repeat.
    about = case.repeat_of if uow.case_version(case.repeat_of) is not None else case.case_id
    supervision = Supervision(
        supervision_id=routing.new_id(),
        case_id=about,
        work_order_id=original.order.id if original is not None else "",
        level="supervise",
        by_node=routing.parent,
        by_actor=SYSTEM,
        demand=f"two unresolved repeats of case {case.repeat_of} (latest {case.case_id}): settle it and report",
        due_at=supervision_at(now, routing.rules.policy, routing.rules.calendar),
        issued_at=now,
        region_code=case.region_code,
    )
    uow.add_supervision(supervision)
    uow.emit(about, [SupervisionRecorded(supervision)])
