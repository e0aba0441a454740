"""Composition of the stats service for any host: wiring only.

The rules are in ``domain``, the use cases in ``handlers`` (over ``ports.StatsUnitOfWork``), the event
subscriptions in ``consumers``, the timers' work in ``upkeep``, the RPCs in ``servicer``, the
persistence in ``store``.
"""

from __future__ import annotations

from lianxin.stats.v1 import stats_service_pb2_grpc as stats_grpc

from services.common.calendar_store import node_calendar
from services.common.service import ServiceContext, ServiceParts, ServicerBinding, Timer
from services.common.settings import StatsSettings
from services.stats.consumers import make_ingestor, subscriptions
from services.stats.domain import StatsConfig
from services.stats.models import outbox
from services.stats.servicer import StatsServicer
from services.stats.upkeep import maintain, refresh_gauges


def stats_config(settings: StatsSettings) -> StatsConfig:
    """LIANXIN_STATS_MONTH_START_DAY (default 1), LIANXIN_STATS_SATISFIED_AFTER_WORKDAYS (default 20)."""
    return StatsConfig(
        month_start_day=settings.month_start_day, satisfied_after_workdays=settings.satisfied_after_workdays
    )


def build(ctx: ServiceContext) -> ServiceParts:
    node = ctx.settings.node
    config = ctx.hooks.stats_config or stats_config(ctx.settings.stats)
    calendar = node_calendar(ctx)  # the node's, with the years its operators loaded
    ingest_event = make_ingestor(
        session_factory=ctx.session_factory, regions=ctx.regions, config=config, calendar=calendar, clock=ctx.clock
    )

    gauge_interval = ctx.settings.stats.gauge_interval_s
    rollup_interval = ctx.settings.stats.rollup_interval_s

    def gauges() -> None:
        refresh_gauges(ctx.session_factory, ctx.regions, node, ctx.clock())

    timers = [Timer("stats-rollup", rollup_interval, lambda: (maintain(ctx.session_factory, ctx.clock()), None)[1])]
    on_scrape = ctx.hooks.on_scrape
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
        subscriptions=subscriptions(ingest_event),
        timers=timers,
        session_factory=ctx.session_factory,
        outbox=outbox,
    )


__all__ = ["build", "stats_config"]
