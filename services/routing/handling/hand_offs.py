"""Moving a case this node owns to another node: 上报 to the parent, 人工交办 down the subtree."""

from __future__ import annotations

from datetime import datetime

from services.common.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from services.common.timeutil import to_utc
from services.routing.domain import ESCALATE_UP
from services.routing.handling.bookkeeping import checked_actor, persist, refuse_if_handed_off
from services.routing.handling.ports import HandedOff, Routing, RoutingEvent, UnitOfWorkFactory, work_order_id_for


def escalate(
    *,
    case_id: str,
    actor: str,
    expected_version: int,
    reason: str,
    uow_factory: UnitOfWorkFactory,
    routing: Routing,
    now: datetime,
) -> HandedOff:
    """上报: this node gives the case to its parent; its work order closes as TRANSFERRED (escalate_up).

    The ``case_handed_off`` (kind ``escalate_up``, epoch + 1) travels up with the rest of the case's
    events; the parent's routing places it with one of its units. Afterwards this node's work order
    refuses writes (``StaleOwner``).
    """
    who = checked_actor(actor)
    if not (case_id or "").strip():
        raise InvalidArgument("case_id", "must be set")
    why = (reason or "").strip()
    if not why:
        raise InvalidArgument("reason", "why the case is escalated (上报理由) is required")
    parent = routing.regions.parent(routing.node)
    if parent is None:
        raise FailedPrecondition(f"node {routing.node} has no tier above to escalate to")
    return _hand_off(
        case_id=case_id,
        actor=who,
        expected_version=expected_version,
        to_node=parent,
        text=f"上报 to {parent}: {why}",
        kind=ESCALATE_UP,
        uow_factory=uow_factory,
        routing=routing,
        now=now,
    )


def hand_down(
    *,
    case_id: str,
    actor: str,
    expected_version: int,
    to_node: str,
    reason: str,
    uow_factory: UnitOfWorkFactory,
    routing: Routing,
    now: datetime,
) -> HandedOff:
    """人工交办: a clerk hands a case this node owns to a node of its subtree (any tier below).

    The same hand-off as the automatic one by region (kind ``assign_down``, epoch + 1); the exchange
    carries it down hop by hop and the receiving node's routing places it by its own catalogue, or in
    its manual queue when the matter's region is not its own. Going up is 上报 (``escalate``).
    """
    who = checked_actor(actor)
    if not (case_id or "").strip():
        raise InvalidArgument("case_id", "must be set")
    target = (to_node or "").strip()
    if target not in routing.regions:
        raise InvalidArgument("node", f"{target!r} is not a known region code")
    if target == routing.node or not routing.regions.contains(routing.node, target):
        raise InvalidArgument(
            "node", f"{target} is not below node {routing.node}: hand down only; use EscalateCase (上报) to go up"
        )
    why = (reason or "").strip()
    if not why:
        raise InvalidArgument("reason", "the instruction for the node below (交办意见) is required")
    return _hand_off(
        case_id=case_id,
        actor=who,
        expected_version=expected_version,
        to_node=target,
        text=f"交办 to {target}: {why}",
        kind="assign_down",
        uow_factory=uow_factory,
        routing=routing,
        now=now,
    )


def _hand_off(
    *,
    case_id: str,
    actor: str,
    expected_version: int,
    to_node: str,
    text: str,
    kind: str,
    uow_factory: UnitOfWorkFactory,
    routing: Routing,
    now: datetime,
) -> HandedOff:
    """Close this node's work order as TRANSFERRED and emit the hand-off that moves ownership (epoch + 1)."""
    now = to_utc(now)
    with uow_factory() as uow:
        stored = uow.get(work_order_id_for(case_id, routing.node), for_update=True)
        if stored is None:
            raise NotFound("work order of case", case_id)
        refuse_if_handed_off(uow, stored)
        followers = uow.merged_into(case_id)
        if followers:
            # Their citizens follow this case's handling here; a hand-off would leave them behind.
            raise FailedPrecondition(
                f"cases {', '.join(followers)} are merged into case {case_id}: undo the merge (UnmergeCase) first",
                stored.order.state,
            )
        known = uow.case_version(case_id)
        version, epoch = known if known is not None else (0, 0)
        if expected_version and expected_version != version:
            raise Conflict(f"case {case_id} is at version {version}, not {expected_version}: re-read it")
        order = stored.order
        events: list[RoutingEvent] = list(
            order.escalate_up(to_node=to_node, at=now, actor=actor, reason=text)
            if kind == ESCALATE_UP
            else order.transfer(to_node=to_node, at=now, actor=actor, reason=text)
        )
        handed = HandedOff(
            case_id=case_id,
            from_node=routing.node,
            to_node=to_node,
            new_owner_epoch=epoch + 1,
            reason=text,
            from_work_order_id=order.id,
            case_snapshot=uow.case_snapshot(case_id),
            at=now,
            kind=kind,
            region_code=order.region_code or "",
            category=order.category or "",
        )
        events.append(handed)  # last: the events before it still carry this node's epoch
        stored.manual_reason = ""
        persist(uow, stored, routing, events, now)
        uow.commit()
    return handed
