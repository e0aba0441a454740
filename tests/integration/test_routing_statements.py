"""Routing's prebuilt statements (issue 21) store exactly what the ORM stored: the same use cases run
through ``SqlRoutingUnitOfWork`` and through the ORM implementation it replaced
(``tests.support.routing_orm``), each on a database of its own, leave the same rows and the same
events, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from lianxin.events.v1 import events_pb2
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from services.common.timeutil import CHINA
from services.routing import handlers
from services.routing.models import metadata
from services.routing.store import SqlRoutingUnitOfWork
from tests.support.routing_orm import OrmReferenceUnitOfWork
from tests.support.routing_store import case, routing_for

CITY = "511100"
NOW = datetime(2026, 11, 23, 2, tzinfo=CHINA)
UnitOfWorkClass = type[SqlRoutingUnitOfWork]


@pytest.fixture()
def engines(database_url: str) -> Iterator[tuple[Engine, Engine]]:
    """Two empty routing databases: SQLite files side by side, or two schemas of one PostgreSQL database."""
    made: list[Engine] = []
    for name in ("prebuilt", "orm"):
        if database_url.startswith("sqlite"):
            engine = create_engine(database_url.replace("test.db", f"{name}.db"))
        else:
            engine = create_engine(database_url, connect_args={"options": f"-csearch_path={name}"})
            with engine.begin() as conn:
                conn.execute(text(f"CREATE SCHEMA {name}"))
        metadata.create_all(engine)
        made.append(engine)
    yield made[0], made[1]
    for engine in made:
        engine.dispose()


def _scenario(factory: sessionmaker[Session], uow_class: UnitOfWorkClass) -> None:
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


def _envelope(body: bytes) -> Any:
    env = events_pb2.EventEnvelope.FromString(body)
    env.ClearField("event_id")  # a new id per event, whichever store
    return env


def _tables(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            keys = list(table.primary_key.columns) or list(table.columns)
            rows = conn.execute(select(table).order_by(*keys)).all()
            if table.name == "outbox":
                # Event and command ids are new ones per run: the events compared without them.
                out[table.name] = [
                    (r.source, r.event_type, r.case_id, _envelope(r.body) if r.event_type != "command" else None)
                    for r in rows
                ]
            else:
                out[table.name] = [tuple(r) for r in rows]
    return out


def test_a_city_s_placements_and_changes_store_what_the_orm_stored(engines: tuple[Engine, Engine]) -> None:
    prebuilt, orm = engines
    _scenario(sessionmaker(prebuilt, expire_on_commit=False), SqlRoutingUnitOfWork)
    _scenario(sessionmaker(orm, expire_on_commit=False), OrmReferenceUnitOfWork)
    got, expected = _tables(prebuilt), _tables(orm)
    assert got["work_orders"] and got["work_order_history"] and got["supervisions"] and got["case_merges"]
    assert {row[2] for row in got["outbox"]} >= {f"511100-20261122-00000{n}" for n in range(1, 8)}
    for name in expected:
        assert got[name] == expected[name], name
