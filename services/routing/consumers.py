"""Routing's event subscriptions: cases registered or handed here, the citizen's ratings, reviews and
withdrawals, video's receptions and consultations, the commands an owner's ancestors and registering
node send, and the replicas that say who owns a case below; each decoded and applied once.

The use cases are in ``handlers``; every one that changes a work order reads it locked, in the same
order as the RPCs (``handling.bookkeeping.changing``), so a consumer never writes back over an RPC's commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime

from google.protobuf.message import DecodeError
from lianxin.common.v1 import common_pb2
from lianxin.events.v1 import events_pb2
from sqlalchemy.orm import Session, sessionmaker

from services.common.events import decode, parse_command
from services.common.inbox import after_commit, consume_once, consumer_transaction
from services.common.service import BusEvent, Subscription
from services.common.timeutil import CHINA, from_timestamp
from services.routing import handlers
from services.routing.domain import CONSULTATION_BOOKED, CONSULTATION_HELD, ESCALATE_UP
from services.routing.handlers import RegisteredCase, Routing, RoutingUnitOfWork
from services.routing.leader import queue_text
from services.routing.models import inbox

log = logging.getLogger(__name__)

# What an event or command does to routing's tables, inside the consumer's transaction.
Apply = Callable[[RoutingUnitOfWork], object]


def registered_case(case: common_pb2.Case, *, version: int, owner_epoch: int, repeat_of: str = "") -> RegisteredCase:
    snapshot = common_pb2.Case()
    snapshot.CopyFrom(case)
    snapshot.ClearField("complainant")
    return RegisteredCase(
        case_id=case.case_id,
        region_code=case.region_code,
        category=case.category,
        registering_node=case.registering_node,
        owner_epoch=owner_epoch,
        version=version,
        channel_hotline=case.channel == common_pb2.CHANNEL_HOTLINE,
        flags=tuple(case.flags),
        repeat_of=repeat_of or case.repeat_of,
        case_snapshot=snapshot.SerializeToString(),
        text=queue_text(case.title, case.body),
    )


def _units(units: Iterable[events_pb2.ConsultationUnit]) -> str:
    return "、".join(f"{u.node}/{u.unit_id}" for u in units)


def consultation_note(env: events_pb2.EventEnvelope) -> tuple[str, str] | None:
    """The history label and text of a remote consultation (远程会商) event: when, which units and
    the topic once booked (and from when, once moved); the minutes once held. None for any other event."""
    kind = env.WhichOneof("payload")
    if kind == "consultation_booked":
        booked = env.consultation_booked
        starts, ends = from_timestamp(booked.starts_at), from_timestamp(booked.ends_at)
        when = f"{starts.astimezone(CHINA):%Y-%m-%d %H:%M}–{ends.astimezone(CHINA):%H:%M}" if starts and ends else ""
        # A move (RescheduleConsultation) books it again: the history says from when to when.
        was = from_timestamp(booked.moved_from) if booked.HasField("moved_from") else None
        slot = f"改期至 {when}（原定 {was.astimezone(CHINA):%Y-%m-%d %H:%M}）" if was else f"定于 {when}"
        text = f"远程会商 {booked.consultation_id} {slot}（{_units(booked.units)}）：{booked.topic}"
        return CONSULTATION_BOOKED, text
    if kind == "consultation_held":
        held = env.consultation_held
        return CONSULTATION_HELD, f"远程会商 {held.consultation_id} 纪要（{_units(held.units)}）：{held.minutes}"
    return None


@dataclass(frozen=True)
class RoutingConsumers:
    """The subscriptions of one node's routing; every handler applies its change once (``consume_once``)."""

    routing: Routing
    session_factory: sessionmaker[Session]
    # The unit of work joining the consumer's session (its inbox row commits with the change).
    unit_of_work: Callable[[Session], AbstractContextManager[RoutingUnitOfWork]]
    clock: Callable[[], datetime]
    # Called after a change committed (it may have put events on the outbox).
    notify: Callable[[], None] = lambda: None

    @property
    def node(self) -> str:
        return self.routing.node

    def subscriptions(self) -> list[Subscription]:
        return [
            Subscription("routing", "intake", "case_registered", self.on_case_registered),
            Subscription("routing", "exchange", "case_handed_off", self.on_case_handed_off),
            Subscription("routing", "intake", "case_evaluated", self.on_case_evaluated),
            Subscription("routing", "exchange", "command", self.on_command),
            Subscription("routing", "intake", "review_requested", self.on_review_requested),
            Subscription("routing", "intake", "case_withdrawn", self.on_case_withdrawn),
            Subscription("routing", "video", "visit_outcome_recorded", self.on_visit_outcome),
            Subscription("routing", "video", "consultation_booked", self.on_consultation),
            Subscription("routing", "video", "consultation_held", self.on_consultation),
            Subscription("routing", "exchange", "supervision_issued", self.on_supervision_replicated),
            Subscription("routing", "exchange", "case_registered", self.on_replica_owner),
            Subscription("routing", "exchange", "work_order_created", self.on_replica_owner),
            Subscription("routing", "exchange", "work_order_changed", self.on_replica_owner),
        ]

    def _consume(self, event: BusEvent, apply: Apply) -> None:
        def in_session(session: Session) -> None:
            with self.unit_of_work(session) as uow:
                apply(uow)

        if consume_once(self.session_factory, inbox, "routing", event, in_session):
            after_commit(self.notify)

    # -- events ------------------------------------------------------------------------------------

    def on_case_registered(self, event: BusEvent) -> None:
        env = decode(event)
        reg = env.case_registered
        case = registered_case(reg.case, version=env.version, owner_epoch=env.owner_epoch, repeat_of=reg.repeat_of)
        routing = self.routing
        self._consume(event, lambda uow: handlers.on_case_arrived(case, uow, routing, now=self.clock()))

    def on_replica_owner(self, event: BusEvent) -> None:
        # A replica of the subtree's handling (or a hand-off passing by): who owns the case now, so a
        # supervisor here can 督办 it through a command to the owner.
        env = decode(event)
        owner = handlers.CaseOwner(env.case_id, env.owner_node, env.owner_epoch, env.version)
        if env.WhichOneof("payload") == "case_handed_off":
            hand_off = env.case_handed_off
            owner = handlers.CaseOwner(env.case_id, hand_off.to_node, hand_off.new_owner_epoch, env.version)
        node = self.node
        if not handlers.owner_to_note(owner, node):
            return  # nothing to keep: no transaction, no inbox row
        # No inbox row either: the upsert keeps only a newer (epoch, version), so a redelivery changes
        # nothing, and it puts nothing on the outbox to wake the relay for. At a city or the province
        # this is every replica of the subtree's handling, four of a case's events at each tier.
        with consumer_transaction(self.session_factory) as session, self.unit_of_work(session) as uow:
            handlers.note_replica_owner(owner, uow, node)

    def on_case_handed_off(self, event: BusEvent) -> None:
        env = decode(event)
        hand_off = env.case_handed_off
        if hand_off.to_node != self.node:
            # A hand-off elsewhere in the tree: replicas of hand-offs between this node's descendants
            # come up through its exchange too, and are not this node's to handle.
            self.on_replica_owner(event)
            return
        case = registered_case(hand_off.case, version=env.version, owner_epoch=hand_off.new_owner_epoch)
        # 上报 from a child: placed with a unit here by category, never handed back down to its region.
        escalated = hand_off.kind == ESCALATE_UP
        routing = self.routing
        self._consume(
            event, lambda uow: handlers.on_case_arrived(case, uow, routing, now=self.clock(), escalated=escalated)
        )

    def on_case_evaluated(self, event: BusEvent) -> None:
        env = decode(event)
        self._consume(event, self._evaluated(env.case_id, env.case_evaluated.satisfaction, env.case_evaluated.comment))

    def on_visit_outcome(self, event: BusEvent) -> None:
        env = decode(event)
        outcome = env.visit_outcome_recorded
        self._consume(event, self._visit_held(env.case_id, outcome.visit_id, outcome.decisions, outcome.minutes))

    def on_consultation(self, event: BusEvent) -> None:
        # 远程会商 hosted at this node: booked (when, which units) and held (its minutes) join the history.
        apply = self._consulted(decode(event))
        if apply is not None:
            self._consume(event, apply)

    def on_case_withdrawn(self, event: BusEvent) -> None:
        env = decode(event)
        self._consume(event, self._withdrawn(env.case_id, env.case_withdrawn.reason))

    def on_review_requested(self, event: BusEvent) -> None:
        env = decode(event)
        self._consume(event, self._review_requested(env.case_id, env.review_requested.reason))

    def on_supervision_replicated(self, event: BusEvent) -> None:
        # A descendant's chase or supervision record (replicated up by exchange): kept read-only
        # here so the tiers above can list what their subtree is being chased for.
        env = decode(event)
        issued = env.supervision_issued
        record = handlers.Supervision(
            supervision_id=issued.supervision_id,
            case_id=env.case_id,
            work_order_id="",
            level=issued.level,
            by_node=issued.by_node,
            by_actor="",
            demand=issued.demand,
            due_at=from_timestamp(issued.due_at, "due_at") or self.clock(),
            issued_at=from_timestamp(env.occurred_at, "occurred_at") or self.clock(),
            region_code=env.owner_node,
        )
        self._consume(event, lambda uow: handlers.record_replicated_supervision(record, uow))

    # -- commands ----------------------------------------------------------------------------------

    def on_command(self, event: BusEvent) -> None:
        # A command exchange delivered here, the case's owner (docs/exchange.md "Commands"): a 督办 of
        # an ancestor, a rating, a 复查 request or a withdrawal the citizen made at the node that
        # registered the case, a visit's outcome. Applied as the local event is, once per command id
        # (the inbox; the bus event id is the command id) — or, when this node has handed the case on
        # since, sent on after the hand-off (handlers.handed_on_to).
        node = self.node
        command = parse_command(event.body)
        if command is None:
            log.warning("undecodable command ignored", extra={"node": node, "event_id": event.event_id})
            return
        apply = self._owner_command(command) if command.case_id else None
        if apply is None:
            return

        def here_or_onward(uow: RoutingUnitOfWork) -> None:
            owner = handlers.handed_on_to(command.case_id, uow, node)
            if owner is None:
                apply(uow)
                return
            uow.forward_command(event.body, owner)
            log.info(
                "command followed the hand-off",
                extra={"node": node, "case_id": command.case_id, "to_node": owner.owner_node},
            )

        self._consume(event, here_or_onward)

    def _owner_command(self, command: events_pb2.Command) -> Apply | None:
        """What a command for the case's owner does here; None for commands that are not routing's."""
        body = command.WhichOneof("body")
        if body == "supervise":
            return self._supervision_here(command)
        if body == "evaluate":
            return self._evaluated(
                command.case_id, command.evaluate.satisfaction, command.evaluate.comment, announce=True
            )
        if body == "request_review":
            return self._review_requested(command.case_id, command.request_review.reason)
        if body == "withdraw":
            return self._withdrawn(command.case_id, command.withdraw.reason)
        if body == "visit_outcome":
            held = command.visit_outcome
            return self._visit_held(command.case_id, held.visit_id, held.decisions, held.minutes)
        if body == "consultation":
            try:
                held_elsewhere = events_pb2.EventEnvelope.FromString(command.consultation.envelope)
            except DecodeError:
                return None
            if held_elsewhere.case_id != command.case_id:
                return None
            return self._consulted(held_elsewhere)
        # other commands (hand-offs, handling updates for the registering node's intake) are not
        # routing's to apply here
        return None

    def _supervision_here(self, command: events_pb2.Command) -> Apply:
        supervise = command.supervise
        now = self.clock()
        record = handlers.Supervision(
            supervision_id=supervise.supervision_id,
            case_id=command.case_id,
            work_order_id="",
            level=supervise.level,
            by_node=command.issuing_node,
            by_actor=supervise.actor,
            demand=supervise.demand,
            due_at=from_timestamp(supervise.due_at, "due_at") or now,
            issued_at=from_timestamp(command.issued_at, "issued_at") or now,
        )
        return lambda uow: handlers.apply_supervision_command(record, uow)

    # -- what an event or a command does, the same either way --------------------------------------

    def _evaluated(self, case_id: str, rating: int, comment: str, *, announce: bool = False) -> Apply:
        satisfied = rating != common_pb2.SATISFACTION_UNSATISFIED
        # A rating that came as a command was recorded at another node: announced here (case_evaluated).
        known = common_pb2.Satisfaction.Name(common_pb2.Satisfaction.ValueType(rating)) if announce and rating else ""
        name = known.removeprefix("SATISFACTION_")
        routing = self.routing
        return lambda uow: handlers.on_case_evaluated(
            case_id, satisfied=satisfied, comment=comment, uow=uow, routing=routing, now=self.clock(), rating=name
        )

    def _review_requested(self, case_id: str, reason: str) -> Apply:
        routing = self.routing
        return lambda uow: handlers.on_case_evaluated(
            case_id, satisfied=None, comment=reason, uow=uow, routing=routing, now=self.clock()
        )

    def _visit_held(self, case_id: str, visit_id: str, decisions: str, minutes: str) -> Apply:
        note = f"视频接访 {visit_id}: {decisions or minutes}"
        routing = self.routing
        return lambda uow: handlers.on_visit_outcome(case_id, note=note, uow=uow, routing=routing, now=self.clock())

    def _consulted(self, env: events_pb2.EventEnvelope) -> Apply | None:
        found = consultation_note(env)
        if found is None:
            return None
        label, note = found
        routing = self.routing
        return lambda uow: handlers.on_consultation(
            env.case_id, label=label, note=note, uow=uow, routing=routing, now=self.clock()
        )

    def _withdrawn(self, case_id: str, reason: str) -> Apply:
        node, routing = self.node, self.routing

        def apply(uow: RoutingUnitOfWork) -> None:
            outcome = handlers.on_case_withdrawn(case_id, reason=reason, uow=uow, routing=routing, now=self.clock())
            if not outcome.applied and outcome.state is not None:
                # Already past withdrawing (closed, handed on, ...): kept as is, the event acknowledged.
                log.info(
                    "withdrawal left the work order as it is",
                    extra={"node": node, "case_id": case_id, "state": outcome.state.value},
                )

        return apply
