"""A city's routing scenario run through a routing unit of work: placements, hand-down, the manual
queue, repeats to supervision, redelivery, escalation back, a merge and the main case's accept and
reply (tests/integration/test_routing_statements.py and test_routing_reads.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from services.common.timeutil import CHINA
from services.routing import handlers
from services.routing.store import SqlRoutingUnitOfWork
from tests.support.routing_store import case, routing_for

CITY = "511100"
NOW = datetime(2026, 11, 23, 2, tzinfo=CHINA)
UnitOfWorkClass = type[SqlRoutingUnitOfWork]


def scenario(factory: sessionmaker[Session], uow_class: UnitOfWorkClass) -> None:
    """A city's cases: placed with a unit, handed down, queued, repeated to supervision, redelivered,
    escalated back, merged and followed, each step as the consumers and RPCs run it."""
    routing = routing_for(CITY)

    def uow() -> SqlRoutingUnitOfWork:
        return uow_class(factory, node=CITY)

    def arrive(c: handlers.RegisteredCase, at: datetime, *, escalated: bool = False) -> handlers.StoredWorkOrder:
        with uow() as u:
            stored = handlers.on_case_arrived(c, u, routing, now=at, escalated=escalated)
            u.commit()
        return stored

    def act(work_order_id: str, step: Callable[..., Any], at: datetime) -> None:
        handlers.act(work_order_id, step, actor="op-1", expected_version=0, uow_factory=uow, routing=routing, now=at)

    t = iter(NOW + timedelta(minutes=i) for i in range(100))
    main = arrive(case("511100-20261122-000001", region=CITY), next(t))
    follower = arrive(case("511100-20261122-000002", region=CITY), next(t))
    arrive(case("511100-20261122-000003", region="511102", version=3), next(t))  # 交办 down
    arrive(case("511100-20261122-000004", region=""), next(t))  # the manual queue
    arrive(case("511100-20261122-000005", region=CITY, hotline=True), next(t))
    arrive(case("511100-20261122-000005", region=CITY, hotline=True), next(t))  # redelivered: unchanged
    for n in (6, 7):  # two unresolved repeats of case 1: supervision by the tier above
        arrive(case(f"511100-20261122-00000{n}", region=CITY, repeat_of="511100-20261122-000001"), next(t))
    # 上报 back up of the case handed down, under a newer epoch: the transferred work order takes it back.
    back = case("511100-20261122-000003", region="511102", version=4)  # below the city's: max kept
    arrive(handlers.RegisteredCase(**{**back.__dict__, "owner_epoch": 3}), next(t), escalated=True)
    handlers.merge_cases(
        main_case_id=main.order.case_id,
        case_ids=[follower.order.case_id],
        actor="op-1",
        expected_version=0,
        reason="同一事项",
        acting_unit="",
        uow_factory=uow,
        routing=routing,
        now=next(t),
    )
    act(main.order.id, lambda s, at, who: handlers.accept(s, at, who, routing, "签收"), next(t))
    act(
        main.order.id,
        lambda s, at, who: handlers.reply(s, at, who, routing, text="已处理。", attachments=(), acting_unit=""),
        next(t),
    )
