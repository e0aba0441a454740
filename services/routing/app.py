"""Composition of the routing service for any host."""

from __future__ import annotations

from datetime import datetime, timedelta

from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc

from services.common.events import decode
from services.common.outbox import consume_once
from services.common.service import BusEvent, ServiceContext, ServiceParts, ServicerBinding, Subscription
from services.routing import handlers
from services.routing.handlers import Placement, RegisteredCase
from services.routing.models import inbox, outbox
from services.routing.servicer import RoutingServicer
from services.routing.store import SqlRoutingUnitOfWork


def _placer(ctx: ServiceContext) -> handlers.Place:
    """属地管理: the direct child toward the matter's region, else a unit of this node by category."""
    node = ctx.settings.node
    regions = ctx.regions

    def place(region_code: str, category: str) -> Placement:
        if not region_code:
            return Placement(manual_reason="place unresolved")
        if not regions.contains(node, region_code):
            return Placement(manual_reason=f"region {region_code} is outside node {node}")
        child = regions.child_toward(node, region_code)
        if child is not None:
            return Placement(hand_off_to=child)
        if not category:
            return Placement(manual_reason="category unresolved")
        return Placement(unit_id=f"{node}:{category}")

    return place


def _deadlines(start: datetime) -> dict[str, datetime]:
    # Settlement within 60 days (信访工作条例 Art. 35); working-day limits come with the calendar.
    return {"settle": start + timedelta(days=60)}


def build(ctx: ServiceContext) -> ServiceParts:
    node = ctx.settings.node
    place = _placer(ctx)

    def on_case_registered(event: BusEvent) -> None:
        env = decode(event)
        case = env.case_registered.case
        registered = RegisteredCase(
            case_id=env.case_id,
            region_code=case.region_code,
            category=case.category,
            registering_node=case.registering_node,
            owner_epoch=env.owner_epoch,
            version=env.version,
        )

        def apply(session: object) -> None:
            with SqlRoutingUnitOfWork(session=session, node=node) as uow:  # type: ignore[arg-type]
                handlers.on_case_registered(
                    registered, uow, node=node, place=place, deadlines=_deadlines, now=ctx.clock()
                )

        if consume_once(ctx.session_factory, inbox, "routing", event, apply):
            ctx.extras.get("notify_outbox", lambda: None)()

    def uow_factory() -> SqlRoutingUnitOfWork:
        return SqlRoutingUnitOfWork(ctx.session_factory, node=node)

    return ServiceParts(
        name="routing",
        servicers=[
            ServicerBinding(
                routing_grpc.add_RoutingServiceServicer_to_server,
                RoutingServicer(uow_factory=uow_factory),
                "lianxin.routing.v1.RoutingService",
            )
        ],
        subscriptions=[Subscription("routing", "intake", "case_registered", on_case_registered)],
        session_factory=ctx.session_factory,
        outbox=outbox,
    )
