"""Composition of the routing service for any host: catalogue, time rules, servicer, subscriptions, sweep timer."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import yaml
from google.protobuf.message import DecodeError
from lianxin.common.v1 import common_pb2
from lianxin.events.v1 import events_pb2
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc
from prometheus_client import Gauge

from services.common.calendar_store import node_calendar
from services.common.events import decode, parse_command
from services.common.outbox import consume_once
from services.common.service import BusEvent, ServiceContext, ServiceParts, ServicerBinding, Subscription, Timer
from services.common.timeutil import CHINA, from_timestamp
from services.routing import handlers
from services.routing.handlers import RegisteredCase, Routing, SweepReport
from services.routing.jurisdiction import load_catalogue
from services.routing.leader import LeaderClasses, parse_leader_classes, queue_text
from services.routing.models import inbox, outbox
from services.routing.provisional import ProvisionalCalendar
from services.routing.servicer import RoutingServicer
from services.routing.store import SqlRoutingUnitOfWork
from services.routing.timelimits import TimeLimitPolicy, TimeRules
from services.routing.workorder import CONSULTATION_BOOKED, CONSULTATION_HELD, ESCALATE_UP

log = logging.getLogger(__name__)

# What an event or command does to routing's tables, inside the consumer's transaction.
Apply = Callable[[handlers.RoutingUnitOfWork], object]

# stats already exports lianxin_work_orders_open{region} from its warehouse; these are routing's own
# live figures, by node, refreshed by every sweep.
# The label is "region" (the node's region code), not "node": Prometheus gives every target a "node" label
# and would keep a clashing one as "exported_node".
WORK_ORDERS_OPEN = Gauge("lianxin_routing_work_orders_open", "Open work orders at this node", ["region"])
WORK_ORDERS_OVERDUE = Gauge(
    "lianxin_routing_work_orders_overdue", "Open work orders with a duty deadline passed", ["region"]
)


def time_limit_policy(path: Path | None) -> TimeLimitPolicy:
    """The node's time limits: the YAML named by LIANXIN_TIME_LIMITS (per tier and category, see
    services/routing/timelimits.py), else the national defaults. A bad file fails the start."""
    if path is None:
        return TimeLimitPolicy.default()
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    return TimeLimitPolicy.from_dict(raw, source=str(path))


def leader_classes(path: Path | None) -> LeaderClasses:
    """领导批转: the classes in the YAML named by LIANXIN_LEADER_CLASSES (services/routing/leader.py),
    else none. A bad file fails the start with ``file: key: reason``."""
    if path is None:
        return LeaderClasses()
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    return parse_leader_classes(raw, source=str(path))


def build_routing(ctx: ServiceContext) -> Routing:
    """The node's jurisdiction and time rules; a bad catalogue or calendar file fails the start loudly."""
    node = ctx.settings.node
    config = ctx.settings.routing
    calendar = ProvisionalCalendar(official=node_calendar(ctx, list(config.calendar_files)))
    return Routing(
        node=node,
        regions=ctx.regions,
        catalogue=load_catalogue(node, ctx.regions),
        rules=TimeRules(time_limit_policy(config.time_limits), calendar),
        calendar=calendar,
        new_id=lambda: str(uuid.uuid4()),
        leader_classes=leader_classes(config.leader_classes),
        # 第三方评价 samples the warehouse's statistical months (docs/stats.md).
        month_start_day=ctx.settings.stats.month_start_day,
    )


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
    the topic once booked; the minutes once held. None for any other event."""
    kind = env.WhichOneof("payload")
    if kind == "consultation_booked":
        booked = env.consultation_booked
        starts, ends = from_timestamp(booked.starts_at), from_timestamp(booked.ends_at)
        when = f"{starts.astimezone(CHINA):%Y-%m-%d %H:%M}–{ends.astimezone(CHINA):%H:%M}" if starts and ends else ""
        text = f"远程会商 {booked.consultation_id} 定于 {when}（{_units(booked.units)}）：{booked.topic}"
        return CONSULTATION_BOOKED, text
    if kind == "consultation_held":
        held = env.consultation_held
        return CONSULTATION_HELD, f"远程会商 {held.consultation_id} 纪要（{_units(held.units)}）：{held.minutes}"
    return None


def build(ctx: ServiceContext) -> ServiceParts:
    node = ctx.settings.node
    routing = build_routing(ctx)
    official = node_calendar(ctx)  # the one build_routing opened, shared with video and stats
    notify = ctx.extras.get("notify_outbox", lambda: None)

    def uow_factory() -> SqlRoutingUnitOfWork:
        return SqlRoutingUnitOfWork(ctx.session_factory, node=node, regions=ctx.regions)

    def consume(event: BusEvent, apply: Apply) -> None:
        def in_session(session: object) -> None:
            with SqlRoutingUnitOfWork(session=session, node=node, regions=ctx.regions) as uow:  # type: ignore[arg-type]
                apply(uow)

        if consume_once(ctx.session_factory, inbox, "routing", event, in_session):
            notify()

    def on_case_registered(event: BusEvent) -> None:
        env = decode(event)
        reg = env.case_registered
        case = registered_case(reg.case, version=env.version, owner_epoch=env.owner_epoch, repeat_of=reg.repeat_of)
        consume(event, lambda uow: handlers.on_case_arrived(case, uow, routing, now=ctx.clock()))

    def on_replica_owner(event: BusEvent) -> None:
        # A replica of the subtree's handling (or a hand-off passing by): who owns the case now, so a
        # supervisor here can 督办 it through a command to the owner.
        env = decode(event)
        owner = handlers.CaseOwner(env.case_id, env.owner_node, env.owner_epoch, env.version)
        if env.WhichOneof("payload") == "case_handed_off":
            hand_off = env.case_handed_off
            owner = handlers.CaseOwner(env.case_id, hand_off.to_node, hand_off.new_owner_epoch, env.version)
        consume(event, lambda uow: handlers.note_replica_owner(owner, uow, node))

    def on_case_handed_off(event: BusEvent) -> None:
        env = decode(event)
        hand_off = env.case_handed_off
        if hand_off.to_node != node:
            # A hand-off elsewhere in the tree: replicas of hand-offs between this node's descendants
            # come up through its exchange too, and are not this node's to handle.
            on_replica_owner(event)
            return
        case = registered_case(hand_off.case, version=env.version, owner_epoch=hand_off.new_owner_epoch)
        # 上报 from a child: placed with a unit here by category, never handed back down to its region.
        escalated = hand_off.kind == ESCALATE_UP
        consume(event, lambda uow: handlers.on_case_arrived(case, uow, routing, now=ctx.clock(), escalated=escalated))

    def evaluated(case_id: str, rating: int, comment: str, *, announce: bool = False) -> Apply:
        satisfied = rating != common_pb2.SATISFACTION_UNSATISFIED
        # A rating that came as a command was recorded at another node: announced here (case_evaluated).
        known = common_pb2.Satisfaction.Name(common_pb2.Satisfaction.ValueType(rating)) if announce and rating else ""
        name = known.removeprefix("SATISFACTION_")
        return lambda uow: handlers.on_case_evaluated(
            case_id, satisfied=satisfied, comment=comment, uow=uow, routing=routing, now=ctx.clock(), rating=name
        )

    def on_case_evaluated(event: BusEvent) -> None:
        env = decode(event)
        consume(event, evaluated(env.case_id, env.case_evaluated.satisfaction, env.case_evaluated.comment))

    def visit_held(case_id: str, visit_id: str, decisions: str, minutes: str) -> Apply:
        note = f"视频接访 {visit_id}: {decisions or minutes}"
        return lambda uow: handlers.on_visit_outcome(case_id, note=note, uow=uow, routing=routing, now=ctx.clock())

    def on_visit_outcome(event: BusEvent) -> None:
        env = decode(event)
        outcome = env.visit_outcome_recorded
        consume(event, visit_held(env.case_id, outcome.visit_id, outcome.decisions, outcome.minutes))

    def consulted(env: events_pb2.EventEnvelope) -> Apply | None:
        found = consultation_note(env)
        if found is None:
            return None
        label, note = found
        return lambda uow: handlers.on_consultation(
            env.case_id, label=label, note=note, uow=uow, routing=routing, now=ctx.clock()
        )

    def on_consultation(event: BusEvent) -> None:
        # 远程会商 hosted at this node: booked (when, which units) and held (its minutes) join the history.
        apply = consulted(decode(event))
        if apply is not None:
            consume(event, apply)

    def withdrawn(case_id: str, reason: str) -> Apply:
        def apply(uow: handlers.RoutingUnitOfWork) -> None:
            outcome = handlers.on_case_withdrawn(case_id, reason=reason, uow=uow, routing=routing, now=ctx.clock())
            if not outcome.applied and outcome.state is not None:
                # Already past withdrawing (closed, handed on, ...): kept as is, the event acknowledged.
                log.info(
                    "withdrawal left the work order as it is",
                    extra={"node": node, "case_id": case_id, "state": outcome.state.value},
                )

        return apply

    def on_case_withdrawn(event: BusEvent) -> None:
        env = decode(event)
        consume(event, withdrawn(env.case_id, env.case_withdrawn.reason))

    def on_review_requested(event: BusEvent) -> None:
        env = decode(event)
        consume(event, review_requested(env.case_id, env.review_requested.reason))

    def review_requested(case_id: str, reason: str) -> Apply:
        return lambda uow: handlers.on_case_evaluated(
            case_id, satisfied=None, comment=reason, uow=uow, routing=routing, now=ctx.clock()
        )

    def supervision_here(command: events_pb2.Command) -> Apply:
        supervise = command.supervise
        now = ctx.clock()
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

    def owner_command(command: events_pb2.Command) -> Apply | None:
        """What a command for the case's owner does here; None for commands that are not routing's."""
        body = command.WhichOneof("body")
        if body == "supervise":
            return supervision_here(command)
        if body == "evaluate":
            return evaluated(command.case_id, command.evaluate.satisfaction, command.evaluate.comment, announce=True)
        if body == "request_review":
            return review_requested(command.case_id, command.request_review.reason)
        if body == "withdraw":
            return withdrawn(command.case_id, command.withdraw.reason)
        if body == "visit_outcome":
            held = command.visit_outcome
            return visit_held(command.case_id, held.visit_id, held.decisions, held.minutes)
        if body == "consultation":
            try:
                held_elsewhere = events_pb2.EventEnvelope.FromString(command.consultation.envelope)
            except DecodeError:
                return None
            if held_elsewhere.case_id != command.case_id:
                return None
            return consulted(held_elsewhere)
        # other commands (hand-offs, handling updates for the registering node's intake) are not
        # routing's to apply here
        return None

    def on_command(event: BusEvent) -> None:
        # A command exchange delivered here, the case's owner (docs/exchange.md "Commands"): a 督办 of
        # an ancestor, a rating, a 复查 request or a withdrawal the citizen made at the node that
        # registered the case, a visit's outcome. Applied as the local event is, once per command id
        # (the inbox; the bus event id is the command id) — or, when this node has handed the case on
        # since, sent on after the hand-off (handlers.handed_on_to).
        command = parse_command(event.body)
        if command is None:
            log.warning("undecodable command ignored", extra={"node": node, "event_id": event.event_id})
            return
        apply = owner_command(command) if command.case_id else None
        if apply is None:
            return

        def here_or_onward(uow: handlers.RoutingUnitOfWork) -> None:
            owner = handlers.handed_on_to(command.case_id, uow, node)
            if owner is None:
                apply(uow)
                return
            uow.forward_command(event.body, owner)
            log.info(
                "command followed the hand-off",
                extra={"node": node, "case_id": command.case_id, "to_node": owner.owner_node},
            )

        consume(event, here_or_onward)

    def on_supervision_replicated(event: BusEvent) -> None:
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
            due_at=from_timestamp(issued.due_at, "due_at") or ctx.clock(),
            issued_at=from_timestamp(env.occurred_at, "occurred_at") or ctx.clock(),
            region_code=env.owner_node,
        )
        consume(event, lambda uow: handlers.record_replicated_supervision(record, uow))

    def sweep_now() -> SweepReport:
        # A year loaded through another process of this node (production: the api took the RPC).
        official.refresh()
        report = handlers.run_sweep(uow_factory=uow_factory, routing=routing, now=ctx.clock())
        WORK_ORDERS_OPEN.labels(region=node).set(report.open)
        WORK_ORDERS_OVERDUE.labels(region=node).set(report.overdue)
        if report.warnings or report.chases or report.supervisions or report.recomputed:
            notify()
            log.info(
                "deadline sweep",
                extra={
                    "node": node,
                    "warnings": report.warnings,
                    "chases": report.chases,
                    "supervisions": report.supervisions,
                    "recomputed": report.recomputed,
                },
            )
        return report

    def sweep_timer() -> None:
        sweep_now()

    ctx.extras.setdefault("routing_sweep", {})[node] = sweep_now
    servicer = RoutingServicer(
        uow_factory=uow_factory, routing=routing, clock=ctx.clock, notify=notify, calendar=official
    )
    return ServiceParts(
        name="routing",
        servicers=[
            ServicerBinding(
                routing_grpc.add_RoutingServiceServicer_to_server, servicer, "lianxin.routing.v1.RoutingService"
            )
        ],
        subscriptions=[
            Subscription("routing", "intake", "case_registered", on_case_registered),
            Subscription("routing", "exchange", "case_handed_off", on_case_handed_off),
            Subscription("routing", "intake", "case_evaluated", on_case_evaluated),
            Subscription("routing", "exchange", "command", on_command),
            Subscription("routing", "intake", "review_requested", on_review_requested),
            Subscription("routing", "intake", "case_withdrawn", on_case_withdrawn),
            Subscription("routing", "video", "visit_outcome_recorded", on_visit_outcome),
            Subscription("routing", "video", "consultation_booked", on_consultation),
            Subscription("routing", "video", "consultation_held", on_consultation),
            Subscription("routing", "exchange", "supervision_issued", on_supervision_replicated),
            Subscription("routing", "exchange", "case_registered", on_replica_owner),
            Subscription("routing", "exchange", "work_order_created", on_replica_owner),
            Subscription("routing", "exchange", "work_order_changed", on_replica_owner),
        ],
        timers=[Timer("routing-deadline-sweep", ctx.settings.sweep_interval_s, sweep_timer)],
        session_factory=ctx.session_factory,
        outbox=outbox,
        close=official.close,
    )
