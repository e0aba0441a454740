"""Composition of the stats service for any host."""

from __future__ import annotations

from lianxin.common.v1 import common_pb2
from lianxin.stats.v1 import stats_service_pb2_grpc as stats_grpc
from sqlalchemy.orm import Session

from services.common.events import decode
from services.common.outbox import consume_once
from services.common.service import BusEvent, ServiceContext, ServiceParts, ServicerBinding, Subscription
from services.common.timeutil import from_timestamp
from services.stats.handlers import CaseFact, region_columns
from services.stats.models import inbox, outbox
from services.stats.servicer import StatsServicer
from services.stats.store import SqlWarehouse


def build(ctx: ServiceContext) -> ServiceParts:
    node = ctx.settings.node

    def on_case_registered(event: BusEvent) -> None:
        env = decode(event)
        case = env.case_registered.case
        region, province, city, county = region_columns(ctx.regions, case.region_code, case.registering_node)
        submitted = from_timestamp(case.submitted_at) or ctx.clock()
        fact = CaseFact(
            case_id=env.case_id,
            region_code=region,
            province_code=province,
            city_code=city,
            county_code=county,
            registering_node=case.registering_node,
            channel=common_pb2.Channel.Name(case.channel).removeprefix("CHANNEL_").lower(),
            category=case.category,
            state=common_pb2.CaseState.Name(case.state).removeprefix("CASE_STATE_"),
            version=env.version,
            submitted_at=submitted,
            updated_at=from_timestamp(env.occurred_at) or submitted,
        )
        consume_once(ctx.session_factory, inbox, "stats", event, lambda s: SqlWarehouse(s).upsert_case_fact(fact))

    def on_work_order_created(event: BusEvent) -> None:
        env = decode(event)
        created = env.work_order_created
        state = "REGISTERED" if created.manual_queue else ("ASSIGNED" if created.unit_id else "TRANSFERRED")
        at = from_timestamp(env.occurred_at) or ctx.clock()

        def apply(session: Session) -> None:
            SqlWarehouse(session).touch_case(env.case_id, state=state, version=env.version, at=at)

        consume_once(ctx.session_factory, inbox, "stats", event, apply)

    return ServiceParts(
        name="stats",
        servicers=[
            ServicerBinding(
                stats_grpc.add_StatsServiceServicer_to_server,
                StatsServicer(session_factory=ctx.session_factory, regions=ctx.regions, node=node),
                "lianxin.stats.v1.StatsService",
            )
        ],
        subscriptions=[
            Subscription("stats", "intake", "case_registered", on_case_registered),
            Subscription("stats", "routing", "work_order_created", on_work_order_created),
        ],
        session_factory=ctx.session_factory,
        outbox=outbox,
    )
