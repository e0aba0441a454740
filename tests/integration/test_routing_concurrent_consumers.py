"""A consumer that changes a work order while an RPC changes it too, on PostgreSQL (issue 16's day in the life).

The day in the life failed about one run in ten on PostgreSQL: the province's TrackCase stayed at
EXTENDED after 沙湾区 replied. 乐山市 had held a video reception for the case just before; its outcome
reached 沙湾区 as a command while the unit replied there. The command's consumer read the work order
(EXTENDED) without a lock, the reply committed, and the consumer then wrote EXTENDED back over it and
numbered its ``visit_outcome -> EXTENDED`` event after the reply's: the county's work order was
EXTENDED again and the registering node, following the newest version, showed EXTENDED with the
reply's text. SQLite takes its write lock at BEGIN (IMMEDIATE), so only PostgreSQL's read committed
let the two interleave. Here the interleaving is forced: the consumer stops between its read and its write, the
reply runs until it is done or waits for a lock, then the consumer writes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from lianxin.common.v1 import common_pb2
from lianxin.events.v1 import events_pb2
from sqlalchemy.orm import Session, sessionmaker

from services.common.db import make_engine, make_session_factory
from services.common.timeutil import CHINA
from services.intake.consumers import handling_change as _handling_change
from services.intake.domain import CaseState
from services.routing import handlers
from services.routing.consumers import registered_case
from services.routing.domain import State
from services.routing.models import metadata, outbox
from services.routing.store import SqlRoutingUnitOfWork
from tests.support.helpers import wait_until
from tests.support.routing_store import routing_for

COUNTY = "511111"
CASE_ID = "510000-20261206-000042"
AT = datetime(2026, 12, 7, 10, tzinfo=CHINA)


@pytest.fixture()
def factory(postgres_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(postgres_url, service="routing", pool_size=2, max_overflow=1)
    metadata.create_all(engine)
    yield make_session_factory(engine)
    engine.dispose()


class ReadThenWait(SqlRoutingUnitOfWork):
    """The consumer's unit of work: it has read the work order and decided; before writing it says so and waits."""

    def __init__(self, factory: sessionmaker[Session], *, read: threading.Event, go: threading.Event) -> None:
        super().__init__(factory, node=COUNTY)
        self._read, self._go = read, go

    def save(self, stored: handlers.StoredWorkOrder) -> None:
        if not self._read.is_set():
            self._read.set()
            assert self._go.wait(60), "the test never let the consumer go on"
        super().save(stored)


def extended_at_the_county(factory: sessionmaker[Session], routing: handlers.Routing) -> str:
    """The day's 沙湾区 case: handed down from the province, accepted, an extension approved (EXTENDED)."""
    pb = common_pb2.Case(
        case_id=CASE_ID,
        region_code=COUNTY,
        category="交通运输",
        registering_node="510000",
        channel=common_pb2.CHANNEL_WEB,
        complainant=common_pb2.Person(name="张三", phone="13912345678"),
    )
    with SqlRoutingUnitOfWork(factory, node=COUNTY) as uow:
        stored = handlers.on_case_arrived(registered_case(pb, version=8, owner_epoch=3), uow, routing, now=AT)
        uow.commit()
    wo = stored.order.id
    steps: list[Callable[[handlers.StoredWorkOrder, datetime, str], Any]] = [
        lambda s, at, who: handlers.accept(s, at, who, routing, "签收"),
        lambda s, at, who: handlers.request_extension(s, at, who, routing, days=30, reason="需招标施工"),
        lambda s, at, who: handlers.decide_extension(s, at, who, routing, approve=True, reason="同意"),
    ]
    for minutes, step in enumerate(steps, start=1):
        act(factory, routing, wo, step, AT + timedelta(minutes=minutes))
    return wo


def act(
    factory: sessionmaker[Session],
    routing: handlers.Routing,
    wo: str,
    step: Callable[[handlers.StoredWorkOrder, datetime, str], Any],
    at: datetime,
) -> handlers.StoredWorkOrder:
    return handlers.act(
        wo,
        step,
        actor="unit",
        expected_version=0,
        uow_factory=lambda: SqlRoutingUnitOfWork(factory, node=COUNTY),
        routing=routing,
        now=at,
    )


def waiting_for_a_lock(factory: sessionmaker[Session]) -> bool:
    with factory() as s:
        waiting = s.scalar(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return bool(waiting)


def routing_events(factory: sessionmaker[Session]) -> list[events_pb2.EventEnvelope]:
    with factory() as s:
        bodies = s.scalars(sa.select(outbox.c.body).order_by(outbox.c.position)).all()
    envs = [events_pb2.EventEnvelope.FromString(b) for b in bodies]
    return [e for e in envs if e.case_id == CASE_ID]


def test_a_visit_outcome_arriving_while_the_unit_replies_does_not_undo_the_reply(
    factory: sessionmaker[Session],
) -> None:
    routing = routing_for(COUNTY)
    wo = extended_at_the_county(factory, routing)

    # The outcome of 乐山市's video reception, delivered as a command: applied as routing's command
    # consumer applies it (where is the case now, then the outcome into the history), held before its write.
    read, go = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    def started(work: Callable[[], object]) -> threading.Thread:
        def run() -> None:
            try:
                work()
            except BaseException as failure:
                failures.append(failure)  # reported by the test's thread

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    def consumer() -> None:
        with ReadThenWait(factory, read=read, go=go) as uow:
            assert handlers.handed_on_to(CASE_ID, uow, COUNTY) is None
            handlers.on_visit_outcome(
                CASE_ID, note="视频接访 v-1: 责成沙湾区交通运输局抢修。", uow=uow, routing=routing, now=AT
            )
            uow.commit()

    def unit_replies() -> handlers.StoredWorkOrder:
        return act(
            factory,
            routing,
            wo,
            lambda s, at, who: handlers.reply(s, at, who, routing, text="已完成抢修。", attachments=(), acting_unit=""),
            AT + timedelta(hours=4),
        )

    outcome = started(consumer)
    wait_until(read.is_set, 30, "the consumer's read of the work order")
    reply = started(unit_replies)
    # The reply commits beside the consumer (no lock between them), or waits for the consumer's lock.
    wait_until(lambda: not reply.is_alive() or waiting_for_a_lock(factory), 30, "the reply done or waiting")
    go.set()
    outcome.join(30)
    reply.join(30)
    assert not failures, failures
    assert not outcome.is_alive() and not reply.is_alive()

    # The county's work order is replied, its history holds both, and the newest event the
    # registering node follows (intake: the highest version's to_state) says REPLIED.
    stored = handlers.get_work_order(wo, uow_factory=lambda: SqlRoutingUnitOfWork(factory, node=COUNTY))
    assert stored.order.state is State.REPLIED
    assert {"visit_outcome", "reply"} <= {h.action for h in stored.order.history}
    changes = [c for c in (_handling_change(e) for e in routing_events(factory)) if c is not None]
    newest = max(changes, key=lambda c: c.version)
    assert newest.to_state is CaseState.REPLIED, [(c.version, c.action, c.to_state) for c in changes]
    assert any(c.action == "reply" and c.reply_text == "已完成抢修。" for c in changes)
