"""领导批转/批示: a leader's instruction recorded on a held case, and handling going on as placement decided."""

from __future__ import annotations

import logging
from datetime import datetime

from services.common.logs import mask_name
from services.routing.domain import State, WorkOrderEvent
from services.routing.handling.ports import SYSTEM, Routing, StoredWorkOrder
from services.routing.leader import check_instruction

log = logging.getLogger(__name__)


def record_instruction(
    stored: StoredWorkOrder, at: datetime, actor: str, routing: Routing, *, leader_name: str, instruction: str
) -> list[WorkOrderEvent]:
    """领导批示: recorded on the case; then handling goes on as placement had decided (the unit chosen,
    accepted and assigned now), or the case stays in the manual queue when no rule placed it."""
    name, text = check_instruction(leader_name, instruction)
    order = stored.order
    events: list[WorkOrderEvent] = list(order.instruct(leader_name=name, text=text, at=at, actor=actor))
    # The name is personal data in a log line: masked there (it travels in full with the case).
    log.info("leader instruction recorded on %s by %s", order.id, mask_name(name))
    unit = order.leader_unit
    if not unit:
        stored.manual_reason = "领导已批示: no routing rule placed the case, a clerk assigns it"
    elif order.state is State.REGISTERED:
        events += order.accept(at=at, actor=SYSTEM, rules=routing.rules, reason="受理: 领导批示 recorded")
        events += order.assign(
            unit_id=unit, at=at, actor=SYSTEM, rules=routing.rules, reason=f"派单目录 {routing.catalogue.source}"
        )
    return events
