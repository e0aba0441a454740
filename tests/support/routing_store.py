"""Routing's handlers over a real database without a node: the node's rules, a case, its arrival."""

from __future__ import annotations

from datetime import datetime

from lianxin.common.v1 import common_pb2
from sqlalchemy.orm import Session, sessionmaker

from services.common.regions import RegionTree
from services.routing import handlers
from services.routing.consumers import registered_case
from services.routing.domain.timelimits import TimeLimitPolicy, TimeRules
from services.routing.handlers import Routing
from services.routing.jurisdiction import load_catalogue
from services.routing.provisional import ProvisionalCalendar
from services.routing.store import SqlRoutingUnitOfWork

TREE = RegionTree.load()


def routing_for(node: str, calendar: ProvisionalCalendar | None = None) -> Routing:
    cal = calendar or ProvisionalCalendar()
    ids = iter(range(1, 10_000))
    return Routing(
        node=node,
        regions=TREE,
        catalogue=load_catalogue(node, TREE),
        rules=TimeRules(TimeLimitPolicy.default(), cal),
        calendar=cal,
        new_id=lambda: f"sv-{next(ids):04d}",
    )


def case(
    case_id: str,
    *,
    region: str = "511102",
    category: str = "环境保护",
    repeat_of: str = "",
    version: int = 1,
    hotline: bool = False,
) -> handlers.RegisteredCase:
    pb = common_pb2.Case(
        case_id=case_id,
        region_code=region,
        category=category,
        registering_node="511100",
        channel=common_pb2.CHANNEL_HOTLINE if hotline else common_pb2.CHANNEL_WEB,
        complainant=common_pb2.Person(name="张三", phone="13812345678"),
    )
    return registered_case(pb, version=version, owner_epoch=1, repeat_of=repeat_of)


def arrive(
    factory: sessionmaker[Session], routing: Routing, c: handlers.RegisteredCase, now: datetime
) -> handlers.StoredWorkOrder:
    with SqlRoutingUnitOfWork(factory, node=routing.node) as uow:
        stored = handlers.on_case_arrived(c, uow, routing, now=now)
        uow.commit()
    return stored
