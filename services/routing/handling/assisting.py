"""主办/协办: the lead unit asks assisting units of this node for their part, they answer it, and only
the lead replies to the citizen.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from services.common.errors import InvalidArgument, PermissionDenied
from services.routing.domain import WorkOrderEvent
from services.routing.handling.bookkeeping import lead_only
from services.routing.handling.ports import Routing, StoredWorkOrder


def request_assist(
    stored: StoredWorkOrder,
    at: datetime,
    actor: str,
    routing: Routing,
    *,
    unit_ids: Sequence[str],
    request: str,
    acting_unit: str,
) -> list[WorkOrderEvent]:
    """The lead unit (or the office) asks assisting units of this node for their part (协办)."""
    lead_only(stored, acting_unit, "asks assisting units")
    for i, unit in enumerate(unit_ids):
        if unit.strip() and unit.strip() not in routing.catalogue.units:
            raise InvalidArgument(f"unit_ids[{i}]", f"{unit!r} is not a unit of node {routing.node}")
    return list(stored.order.request_assist(unit_ids, at=at, actor=actor, rules=routing.rules, request=request))


def answer_assist(
    stored: StoredWorkOrder, at: datetime, actor: str, routing: Routing, *, unit_id: str, text: str, acting_unit: str
) -> list[WorkOrderEvent]:
    """An assisting unit answers the lead (协办意见); a unit answers only for itself."""
    if acting_unit and unit_id and acting_unit != unit_id:
        raise PermissionDenied(f"unit {acting_unit} cannot answer for assisting unit {unit_id}")
    return list(stored.order.answer_assist(unit_id, at=at, actor=actor, rules=routing.rules, text=text))


def reply(
    stored: StoredWorkOrder,
    at: datetime,
    actor: str,
    routing: Routing,
    *,
    text: str,
    attachments: Sequence[str],
    acting_unit: str,
) -> list[WorkOrderEvent]:
    """答复: only the lead unit replies to the citizen (assisting units answer the lead)."""
    lead_only(stored, acting_unit, "replies to the citizen")
    return stored.order.reply(text=text, at=at, actor=actor, rules=routing.rules, attachments=attachments)
