"""Composition of the stats service for any host: subscriptions, gauges timer and the gRPC servicer."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from lianxin.stats.v1 import stats_service_pb2_grpc as stats_grpc
from prometheus_client import Gauge
from sqlalchemy.orm import Session, sessionmaker

from services.common.calendar import WorkingCalendar
from services.common.calendar_store import node_calendar
from services.common.db import transaction
from services.common.events import decode
from services.common.outbox import consume_once
from services.common.regions import RegionTree
from services.common.service import BusEvent, ServiceContext, ServiceParts, ServicerBinding, Subscription, Timer
from services.common.settings import StatsSettings
from services.stats import handlers
from services.stats.domain import CachedCalendar, StatsConfig
from services.stats.models import inbox, outbox
from services.stats.servicer import StatsServicer
from services.stats.store import SqlWarehouse
from services.stats.translate import case_text, to_case_event

# Region codes only as labels: never anything personal (DESIGN §6).
WORK_ORDERS_OPEN = Gauge(
    "lianxin_work_orders_open", "Open cases (not closed, withdrawn, merged or refused)", ["region"]
)
WORK_ORDERS_OVERDUE = Gauge(
    "lianxin_work_orders_overdue", "Open cases past their handling deadline without a reply", ["region"]
)
SUPERVISIONS_ACTIVE = Gauge("lianxin_supervisions_active", "Open cases under supervision (督办)", ["region"])

# Events the warehouse folds, by emitting service. "exchange" carries the subtree's replicas.
SUBSCRIBED: tuple[tuple[str, str], ...] = (
    ("intake", "case_registered"),
    ("intake", "case_evaluated"),
    ("intake", "case_withdrawn"),
    ("intake", "case_merged"),
    ("routing", "work_order_created"),
    ("routing", "work_order_changed"),
    ("routing", "supervision_issued"),
    ("routing", "case_handed_off"),
    ("routing", "case_merged"),
    ("routing", "case_withdrawn"),
    ("routing", "case_evaluated"),
    ("routing", "deadline_warning"),
    ("routing", "case_sampled"),
    ("routing", "third_party_rated"),
    ("exchange", "case_registered"),
    ("exchange", "work_order_created"),
    ("exchange", "work_order_changed"),
    ("exchange", "case_evaluated"),
    ("exchange", "supervision_issued"),
    ("exchange", "case_handed_off"),
    ("exchange", "case_merged"),
    ("exchange", "case_withdrawn"),
    ("exchange", "deadline_warning"),
    ("exchange", "case_sampled"),
    ("exchange", "third_party_rated"),
)


def stats_config(settings: StatsSettings) -> StatsConfig:
    """LIANXIN_STATS_MONTH_START_DAY (default 1), LIANXIN_STATS_SATISFIED_AFTER_WORKDAYS (default 20)."""
    return StatsConfig(
        month_start_day=settings.month_start_day, satisfied_after_workdays=settings.satisfied_after_workdays
    )


def make_ingestor(
    *,
    session_factory: sessionmaker[Session],
    regions: RegionTree,
    config: StatsConfig,
    calendar: WorkingCalendar,
    clock: Callable[[], datetime] | None = None,
) -> Callable[[BusEvent], bool]:
    """The one entry for every source (own services or exchange); idempotent by event id and by version."""
    calendar = CachedCalendar(calendar)

    def ingest_event(event: BusEvent) -> bool:
        env = decode(event)
        case_event = to_case_event(env)
        if case_event is None:
            return False

        def apply(session: Session) -> None:
            handlers.ingest(
                SqlWarehouse(session, clock=clock),
                case_event,
                source=event.source,
                body=event.body,
                text=case_text(env),
                tree=regions,
                config=config,
                calendar=calendar,
            )

        return consume_once(session_factory, inbox, "stats", event, apply)

    return ingest_event


def roll_forward(session_factory: sessionmaker[Session], as_of: datetime, batch: int = 5000) -> int:
    """Re-count in the rollups the facts whose deadline or rating window closed since they were
    rolled, in batches of ``batch`` (one transaction each). Queries are exact without it; it keeps
    the set of facts they correct with small. Returns the facts rolled."""
    total = 0
    while True:
        with transaction(session_factory) as session:
            done = SqlWarehouse(session).roll_forward(as_of=as_of, limit=batch)
        total += done
        if done < batch:
            return total


def maintain(session_factory: sessionmaker[Session], as_of: datetime) -> int:
    """The ``stats-rollup`` timer: roll the stale facts forward, then ANALYZE the warehouse tables
    that changed much since their last ANALYZE (plans stay right without autovacuum, and on
    SQLite, which never analyses by itself). Returns the facts rolled."""
    rolled = roll_forward(session_factory, as_of)
    with transaction(session_factory) as session:
        SqlWarehouse(session).refresh_planner_statistics()
    return rolled


def refresh_gauges(
    session_factory: sessionmaker[Session], regions: RegionTree, node: str, as_of: datetime
) -> dict[str, tuple[int, int, int]]:
    with session_factory() as session:
        counts = SqlWarehouse(session).open_work(tier=regions.get(node).tier, region_code=node, as_of=as_of)
    # The node's own series exist from the first refresh, at 0 with no open case, so that rate() and
    # delta() over them work from the start.
    for region, (open_count, overdue, supervised) in {node: (0, 0, 0), **counts}.items():
        label = region or node
        WORK_ORDERS_OPEN.labels(label).set(open_count)
        WORK_ORDERS_OVERDUE.labels(label).set(overdue)
        SUPERVISIONS_ACTIVE.labels(label).set(supervised)
    return counts


def build(ctx: ServiceContext) -> ServiceParts:
    node = ctx.settings.node
    config = ctx.extras.get("stats_config") or stats_config(ctx.settings.stats)
    calendar = node_calendar(ctx)  # the node's, with the years its operators loaded
    ingest_event = make_ingestor(
        session_factory=ctx.session_factory, regions=ctx.regions, config=config, calendar=calendar, clock=ctx.clock
    )

    def handle(event: BusEvent) -> None:
        ingest_event(event)

    gauge_interval = ctx.settings.stats.gauge_interval_s
    rollup_interval = ctx.settings.stats.rollup_interval_s

    def gauges() -> None:
        refresh_gauges(ctx.session_factory, ctx.regions, node, ctx.clock())

    timers = [Timer("stats-rollup", rollup_interval, lambda: (maintain(ctx.session_factory, ctx.clock()), None)[1])]
    on_scrape: Callable[[Callable[[], object]], None] | None = ctx.extras.get("on_scrape")
    if on_scrape is not None:
        on_scrape(gauges)  # an embedded node: the open-work gauges when /metrics is read
    else:
        timers.insert(0, Timer("stats-gauges", gauge_interval, gauges))
    return ServiceParts(
        name="stats",
        servicers=[
            ServicerBinding(
                stats_grpc.add_StatsServiceServicer_to_server,
                StatsServicer(
                    session_factory=ctx.session_factory,
                    regions=ctx.regions,
                    node=node,
                    config=config,
                    clock=ctx.clock,
                ),
                "lianxin.stats.v1.StatsService",
            )
        ],
        subscriptions=[Subscription("stats", source, kind, handle) for source, kind in SUBSCRIBED],
        timers=timers,
        session_factory=ctx.session_factory,
        outbox=outbox,
    )


__all__ = ["SUBSCRIBED", "build", "maintain", "make_ingestor", "refresh_gauges", "roll_forward", "stats_config"]
