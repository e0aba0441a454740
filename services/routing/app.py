"""Composition of the routing service for any host: wiring only.

The rules are in ``workorder`` (the work order, its transitions and clocks) with ``timelimits``,
``jurisdiction``, ``merging``, ``leader`` and ``evaluation``; the use cases in ``handlers``; the event
subscriptions in ``consumers``; the gRPC translation in ``servicer``; the tables in ``store``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import yaml
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc
from prometheus_client import Gauge
from sqlalchemy.orm import Session

from services.common.calendar_store import NodeCalendar, node_calendar
from services.common.service import ServiceContext, ServiceParts, ServicerBinding, Timer
from services.routing import handlers
from services.routing.consumers import RoutingConsumers
from services.routing.domain.timelimits import TimeLimitPolicy, TimeRules
from services.routing.handlers import Routing, SweepReport
from services.routing.jurisdiction import load_catalogue
from services.routing.leader import LeaderClasses, parse_leader_classes
from services.routing.models import outbox
from services.routing.provisional import ProvisionalCalendar
from services.routing.servicer import RoutingServicer
from services.routing.store import SqlRoutingUnitOfWork

log = logging.getLogger(__name__)

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
    services/routing/domain/timelimits.py), else the national defaults. A bad file fails the start."""
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


def _sweeper(
    routing: Routing,
    official: NodeCalendar,
    uow_factory: Callable[[], SqlRoutingUnitOfWork],
    clock: Callable[[], datetime],
    notify: Callable[[], None],
) -> Callable[[], SweepReport]:
    """The deadline sweep's pass: warn, chase and supervise, refresh the gauges, wake the relay."""
    node = routing.node

    def sweep_now() -> SweepReport:
        # A year loaded through another process of this node (production: the api took the RPC).
        official.refresh()
        report = handlers.run_sweep(uow_factory=uow_factory, routing=routing, now=clock())
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

    return sweep_now


def build(ctx: ServiceContext) -> ServiceParts:
    node = ctx.settings.node
    routing = build_routing(ctx)
    official = node_calendar(ctx)  # the one build_routing opened, shared with video and stats
    notify: Callable[[], None] = ctx.hooks.notify_outbox or (lambda: None)

    def uow_factory() -> SqlRoutingUnitOfWork:
        return SqlRoutingUnitOfWork(ctx.session_factory, node=node, regions=ctx.regions)

    def reads() -> SqlRoutingUnitOfWork:
        return SqlRoutingUnitOfWork(reads=ctx.engine, node=node, regions=ctx.regions)

    def joined(session: Session) -> SqlRoutingUnitOfWork:
        return SqlRoutingUnitOfWork(session=session, node=node, regions=ctx.regions)

    consumers = RoutingConsumers(
        routing=routing, session_factory=ctx.session_factory, unit_of_work=joined, clock=ctx.clock, notify=notify
    )
    sweep_now = _sweeper(routing, official, uow_factory, ctx.clock, notify)

    def sweep_timer() -> None:
        sweep_now()

    ctx.hooks.routing_sweep[node] = sweep_now
    servicer = RoutingServicer(
        uow_factory=uow_factory, reads=reads, routing=routing, clock=ctx.clock, notify=notify, calendar=official
    )
    return ServiceParts(
        name="routing",
        servicers=[
            ServicerBinding(
                routing_grpc.add_RoutingServiceServicer_to_server, servicer, "lianxin.routing.v1.RoutingService"
            )
        ],
        subscriptions=consumers.subscriptions(),
        timers=[Timer("routing-deadline-sweep", ctx.settings.sweep_interval_s, sweep_timer)],
        session_factory=ctx.session_factory,
        outbox=outbox,
        close=official.close,
    )
