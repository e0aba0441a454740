"""Intake's event subscriptions: routing's handling of its cases (here or, replicated, below), hand-offs
and the handling updates an owner elsewhere sends as commands; each decoded and applied once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from lianxin.common.v1 import common_pb2
from lianxin.events.v1 import events_pb2
from sqlalchemy.orm import Session, sessionmaker

from services.common.events import WORK_ORDER_EVENTS, decode, parse_command, parse_envelope, unfolded
from services.common.inbox import after_commit, consume_once
from services.common.service import BusEvent, Subscription
from services.common.timeutil import from_timestamp
from services.intake import handlers
from services.intake.domain import HANDLING_DEADLINE_KINDS, CaseState, registered_here
from services.intake.handlers import HandlingChange, HandOffSeen, IntakeUnitOfWork
from services.intake.models import inbox

log = logging.getLogger(__name__)

# Routing's events intake follows (events.WORK_ORDER_EVENTS) come from this node's routing and
# (source "exchange") replicated up from the nodes below, where cases registered here may be handled
# after a hand-off down.
HAND_OFF_EVENTS = ("case_handed_off",)


# "exchange": replicas of the subtree's events (and hand-offs delivered down to this node), republished
# on this node's bus; consume_once dedups by event id and old versions change nothing.
SOURCES = ("routing", "exchange")


def hand_off_seen(env: events_pb2.EventEnvelope) -> HandOffSeen:
    hand_off = env.case_handed_off
    return HandOffSeen(
        case_id=env.case_id, version=env.version, to_node=hand_off.to_node, new_owner_epoch=hand_off.new_owner_epoch
    )


def handling_change(env: events_pb2.EventEnvelope) -> HandlingChange | None:
    """Routing's work order event as intake follows it; None for any other payload."""
    kind = env.WhichOneof("payload")
    if kind not in WORK_ORDER_EVENTS:
        return None
    at = from_timestamp(env.occurred_at)
    assert at is not None
    if kind == "work_order_created":
        created = env.work_order_created
        assigned = bool(created.unit_id) and not created.manual_queue
        # No milestone of its own: routing's "assign" change that follows is the citizen's 已交办
        # (listing both showed it twice).
        return HandlingChange(
            case_id=env.case_id,
            version=env.version,
            action="",
            to_state=CaseState.ASSIGNED if assigned else None,
            work_order_id=created.work_order_id,
            unit_id=created.unit_id,
            at=at,
            owner_node=env.owner_node,
            owner_epoch=env.owner_epoch,
            handling_due=_handling_due(created.deadlines),
        )
    changed = env.work_order_changed
    to_state = None
    if changed.to_state:
        to_state = CaseState(common_pb2.CaseState.Name(changed.to_state).removeprefix("CASE_STATE_"))
    return HandlingChange(
        case_id=env.case_id,
        version=env.version,
        action=changed.action,
        to_state=to_state,
        work_order_id=changed.work_order_id,
        unit_id=changed.unit_id,
        at=at,
        owner_node=env.owner_node,
        owner_epoch=env.owner_epoch,
        reply_text=changed.reply_text,
        handling_due=_handling_due(changed.deadlines),
        main_case_id=changed.main_case_id,
    )


def handling_changes(env: events_pb2.EventEnvelope) -> list[HandlingChange]:
    """Routing's event as the changes intake follows: a placement folded into its creation (受理 and
    交办, issue 21) is the three changes its three events were, so 已受理, 已交办 and the 受理 notice
    come out as before."""
    return [change for one in unfolded(env) if (change := handling_change(one)) is not None]


def _handling_due(deadlines: Sequence[common_pb2.Deadline]) -> datetime | None:
    due = {d.kind: d.due_at for d in deadlines if d.HasField("due_at")}
    for kind in HANDLING_DEADLINE_KINDS:
        if kind in due:
            return from_timestamp(due[kind])
    return None


@dataclass(frozen=True)
class IntakeConsumers:
    """The subscriptions of one node's intake; every handler applies its change once (``consume_once``)."""

    node: str
    session_factory: sessionmaker[Session]
    unit_of_work: Callable[[Session], IntakeUnitOfWork]
    # Called after a handling change committed (it may have queued a progress notice to send).
    followed: Callable[[], None] = lambda: None

    def subscriptions(self) -> list[Subscription]:
        return [
            *(Subscription("intake", s, kind, self.on_handling) for s in SOURCES for kind in WORK_ORDER_EVENTS),
            *(Subscription("intake", s, kind, self.on_hand_off) for s in SOURCES for kind in HAND_OFF_EVENTS),
            Subscription("intake", "exchange", "command", self.on_command),
        ]

    def on_handling(self, event: BusEvent) -> None:
        env = decode(event)
        if event.source != "routing" and not registered_here(env.case_id, self.node):
            # A replica of the subtree's handling of a case registered elsewhere: nothing to follow here.
            return
        self._follow(event, handling_changes(env))

    def on_command(self, event: BusEvent) -> None:
        # A handling update exchange delivered here, the registering node: the owner's routing sends
        # its work order events as commands when this node is neither the owner nor above it (after a
        # 上报 or a transfer into another subtree), since replicas would not come down. Applied as a
        # replica is, once per command id (the inbox; the bus event id is the command id).
        node = self.node
        command = parse_command(event.body)
        if command is None:
            log.warning("undecodable command ignored", extra={"node": node, "event_id": event.event_id})
            return
        if command.WhichOneof("body") != "handling" or not registered_here(command.case_id, node):
            return  # the citizen's requests are routing's (the owner's) to apply
        env = parse_envelope(command.handling.envelope)
        if env is None:
            log.warning("undecodable handling update ignored", extra={"node": node, "event_id": event.event_id})
            return
        if env.case_id != command.case_id:
            log.warning("handling update about another case ignored", extra={"node": node, "event_id": event.event_id})
            return
        self._follow(event, handling_changes(env))

    def on_hand_off(self, event: BusEvent) -> None:
        env = decode(event)
        if not registered_here(env.case_id, self.node):
            return
        seen = hand_off_seen(env)

        def apply(session: Session) -> None:
            handlers.apply_hand_off(seen, self.unit_of_work(session))

        consume_once(self.session_factory, inbox, "intake", event, apply)

    def _follow(self, event: BusEvent, changes: Sequence[HandlingChange]) -> None:
        if not changes:
            return

        def apply(session: Session) -> None:
            uow = self.unit_of_work(session)
            for change in changes:  # one inbox row and one transaction for a folded placement
                handlers.apply_handling_change(change, uow)

        if consume_once(self.session_factory, inbox, "intake", event, apply):
            after_commit(self.followed)
