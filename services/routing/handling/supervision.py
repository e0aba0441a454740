"""催办/督办: directives issued here (recorded, or sent to the owner elsewhere as a command), an
ancestor's delivered here, the subtree's replicated here, and where a command must follow a hand-off.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

from services.common.errors import Conflict, InvalidArgument, NotFound
from services.common.timeutil import to_utc
from services.routing.domain import State
from services.routing.handling.bookkeeping import changing, checked_actor
from services.routing.handling.ports import (
    LEVELS,
    CaseOwner,
    Routing,
    RoutingUnitOfWork,
    StoredWorkOrder,
    Supervision,
    SupervisionRecorded,
    SupervisionRequested,
    UnitOfWorkFactory,
)


def supervise(
    *,
    case_id: str,
    work_order_id: str,
    actor: str,
    expected_version: int,
    level: str,
    demand: str,
    due_at: datetime | None,
    uow_factory: UnitOfWorkFactory,
    routing: Routing,
    now: datetime,
) -> SupervisionSent:
    """Record a chase or supervision directive of this node's office and announce it."""
    who = checked_actor(actor)
    if level not in LEVELS:
        raise InvalidArgument("level", f"expected one of {', '.join(LEVELS)}, got {level!r}")
    if not (demand or "").strip():
        raise InvalidArgument("demand", "what the supervisor demands is required")
    if due_at is None:
        raise InvalidArgument("due_at", "when the demand must be met is required")
    now = to_utc(now)
    if to_utc(due_at) <= now:
        raise InvalidArgument("due_at", "must be in the future")
    if not case_id and not work_order_id:
        raise InvalidArgument("case_id", "give case_id or work_order_id")
    with uow_factory() as uow:
        stored = uow.get(work_order_id) if work_order_id else uow.for_case(case_id)
        if work_order_id and stored is None:
            raise NotFound("work order", work_order_id)
        if stored is not None and case_id and stored.order.case_id != case_id:
            raise InvalidArgument("work_order_id", f"{work_order_id} belongs to case {stored.order.case_id}")
        about = stored.order.case_id if stored is not None else case_id
        known = uow.case_version(about)
        owner = _owner_elsewhere(stored, known, uow.case_owner(about), routing.node)
        if owner is not None:
            # An ancestor's 督办 of a case a node below owns: the owner records it (DESIGN §3).
            if expected_version and expected_version != owner.version:
                raise Conflict(f"case {about} is at version {owner.version}, not {expected_version}: re-read it")
            supervision = Supervision(
                supervision_id=routing.new_id(),
                case_id=about,
                work_order_id="",
                level=level,
                by_node=routing.node,
                by_actor=who,
                demand=demand.strip(),
                due_at=to_utc(due_at),
                issued_at=now,
                region_code=(stored.order.region_code or "") if stored is not None else "",
            )
            uow.send_supervision(SupervisionRequested(supervision, owner.owner_node, owner.owner_epoch))
            uow.commit()
            return SupervisionSent(supervision, owner.owner_node)
        if known is None:
            raise NotFound("case", about)
        if expected_version and expected_version != known[0]:
            raise Conflict(f"case {about} is at version {known[0]}, not {expected_version}: re-read it")
        supervision = Supervision(
            supervision_id=routing.new_id(),
            case_id=about,
            work_order_id=stored.order.id if stored is not None else "",
            level=level,
            by_node=routing.node,
            by_actor=who,
            demand=demand.strip(),
            due_at=to_utc(due_at),
            issued_at=now,
            region_code=(stored.order.region_code or "") if stored is not None else "",
        )
        uow.add_supervision(supervision)
        uow.emit(about, [SupervisionRecorded(supervision)])
        uow.commit()
    return SupervisionSent(supervision, "")


@dataclass(frozen=True)
class SupervisionSent:
    """A supervision as issued here; ``sent_to`` names the owner it went to as a command ("" when recorded here)."""

    supervision: Supervision
    sent_to: str


def _owner_elsewhere(
    stored: StoredWorkOrder | None, known: tuple[int, int] | None, replica: CaseOwner | None, node: str
) -> CaseOwner | None:
    """The node that owns the case when it is not this one (None when this node handles it or knows nothing).

    This node owns a case it holds a work order or a version for, unless that work order was handed
    on (TRANSFERRED) or a replica names a newer owner elsewhere.
    """
    here_epoch = known[1] if known is not None else -1
    if replica is not None and replica.owner_node != node and replica.owner_epoch > here_epoch:
        return replica
    if stored is not None and stored.order.state is State.TRANSFERRED and stored.order.transferred_to:
        if replica is not None and replica.owner_node != node and replica.owner_epoch >= here_epoch:
            return replica
        # The hand-off already raised this node's epoch to the receiver's (``emit``): naming one more
        # would be newer than any node knows, and exchange would then never chase the case further.
        return CaseOwner(stored.order.case_id, stored.order.transferred_to, here_epoch, known[0] if known else 0)
    if known is None and replica is not None and replica.owner_node != node:
        return replica
    return None


def handed_on_to(case_id: str, uow: RoutingUnitOfWork, node: str) -> CaseOwner | None:
    """The owner a command delivered here must follow to, when this node has handed the case on.

    Exchange delivers a command where its issuer said the owner was, and chases a newer owner only
    when its own node already knows of the hand-off. A command can still arrive just after this
    node's routing handed the case on (交办 down, 上报 up) and before its exchange heard of it: the
    hand-off and the command can even come down in one batch. Applied here, a 督办 would be recorded
    by a node that no longer handles the case (counted at the city, never heard of at the county that
    handles it) and a rating would close nothing. None: this node handles the case, or does not know it.
    """
    stored = changing(uow, case_id)  # the command applied next sees the same work order
    known = uow.case_version(case_id)
    if stored is None or known is None or stored.order.state is not State.TRANSFERRED:
        return None
    return _owner_elsewhere(stored, known, uow.case_owner(case_id), node)


def apply_supervision_command(supervision: Supervision, uow: RoutingUnitOfWork) -> bool:
    """An ancestor's 督办 delivered here, the owner: recorded once (its id) and announced, so every
    tier above keeps the same record. False when this node does not hold the case (nothing recorded)."""
    if uow.has_supervision(supervision.supervision_id):
        return False
    stored = uow.for_case(supervision.case_id)
    if uow.case_version(supervision.case_id) is None:
        return False
    if stored is not None:
        supervision = dataclasses.replace(
            supervision, work_order_id=stored.order.id, region_code=stored.order.region_code or ""
        )
    uow.add_supervision(supervision)
    uow.emit(supervision.case_id, [SupervisionRecorded(supervision)])
    return True


def owner_to_note(owner: CaseOwner, node: str) -> bool:
    """Whether a replica's owner is kept here: one elsewhere; this node's own cases are in its work orders.

    Decided from the event alone, so the consumer opens no transaction for the others."""
    return bool(owner.owner_node) and owner.owner_node != node


def note_replica_owner(owner: CaseOwner, uow: RoutingUnitOfWork, node: str) -> None:
    """A replica of a case the subtree handles says who owns it; kept for the supervisors here.

    Idempotent by itself (``note_owner`` keeps only a newer (epoch, version)), so it needs no inbox row."""
    if owner_to_note(owner, node):
        uow.note_owner(owner)


def record_replicated_supervision(supervision: Supervision, uow: RoutingUnitOfWork) -> None:
    """A descendant's 催办/督办 record, kept read-only so ancestors see their subtree's supervision.

    The consumer's inbox makes a redelivery a no-op; the record is never changed here, only at the
    node that owns the case.
    """
    uow.add_supervision(supervision)
