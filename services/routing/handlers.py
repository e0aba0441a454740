"""Routing's use cases as plain functions: what happens when a case is registered, and queries."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from services.common.errors import NotFound


@dataclass(frozen=True)
class RegisteredCase:
    """What routing needs to know of a newly registered case (from the CaseRegistered event)."""

    case_id: str
    region_code: str
    category: str
    registering_node: str
    owner_epoch: int
    version: int


@dataclass(frozen=True)
class Placement:
    """The jurisdiction decision: a unit of this node, a child node (交办), or the manual queue."""

    unit_id: str = ""
    hand_off_to: str = ""
    manual_reason: str = ""


@dataclass
class WorkOrderView:
    work_order_id: str
    case_id: str
    node: str
    unit_id: str
    category: str
    region_code: str
    state: str
    manual_queue: bool
    hand_off_to: str
    deadlines: dict[str, datetime]
    created_at: datetime
    updated_at: datetime
    history: list[HistoryEntry] = field(default_factory=list)


@dataclass(frozen=True)
class HistoryEntry:
    at: datetime
    actor: str
    action: str
    from_state: str
    to_state: str
    reason: str


class RoutingUnitOfWork(Protocol):
    def get(self, work_order_id: str) -> WorkOrderView | None: ...

    def for_case(self, case_id: str) -> WorkOrderView | None: ...

    def add(self, work_order: WorkOrderView, *, case: RegisteredCase) -> None: ...

    def commit(self) -> None: ...


UnitOfWorkFactory = Callable[[], AbstractContextManager[RoutingUnitOfWork]]
Place = Callable[[str, str], Placement]


def work_order_id_for(case_id: str, node: str) -> str:
    """Deterministic, so a redelivered CaseRegistered can never create a second work order."""
    return f"WO-{case_id}@{node}"


def on_case_registered(
    case: RegisteredCase,
    uow: RoutingUnitOfWork,
    *,
    node: str,
    place: Place,
    deadlines: Callable[[datetime], dict[str, datetime]],
    now: datetime,
) -> WorkOrderView:
    """属地管理、分级负责: assign to this node's unit, hand down to the child node, or queue for a clerk."""
    existing = uow.for_case(case.case_id)
    if existing is not None:
        return existing
    placement = place(case.region_code, case.category)
    if placement.hand_off_to:
        state, action = "TRANSFERRED", "hand_off"
    elif placement.unit_id:
        state, action = "ASSIGNED", "assign"
    else:
        state, action = "REGISTERED", "manual_queue"
    work_order = WorkOrderView(
        work_order_id=work_order_id_for(case.case_id, node),
        case_id=case.case_id,
        node=node,
        unit_id=placement.unit_id,
        category=case.category,
        region_code=case.region_code,
        state=state,
        manual_queue=not (placement.unit_id or placement.hand_off_to),
        hand_off_to=placement.hand_off_to,
        deadlines=deadlines(now) if placement.unit_id else {},
        created_at=now,
        updated_at=now,
        history=[
            HistoryEntry(
                at=now,
                actor="system",
                action=action,
                from_state="REGISTERED",
                to_state=state,
                reason=placement.manual_reason or placement.hand_off_to or placement.unit_id,
            )
        ],
    )
    uow.add(work_order, case=case)
    return work_order


def get_work_order(work_order_id: str, *, uow_factory: UnitOfWorkFactory) -> WorkOrderView:
    with uow_factory() as uow:
        found = uow.get(work_order_id)
    if found is None:
        raise NotFound("work order", work_order_id)
    return found
