"""The batched sweep on a real database: many work orders over several batches, each stage written once.

Also the bulk outbox append's lock on PostgreSQL: it must be the very lock ``append_event`` takes,
or a bulk writer and a single writer of the same case could commit that case's events out of order.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import datetime

import pytest
from lianxin.events.v1 import events_pb2
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from services.common.events import unfolded
from services.common.outbox import _pg_lock_key, append_events
from services.common.service import BusEvent
from services.common.timeutil import CHINA
from services.routing import handlers
from services.routing.models import SupervisionRow, WorkOrderHistoryRow, metadata, outbox
from services.routing.store import SqlRoutingUnitOfWork
from tests.support.routing_store import arrive, case, routing_for

REGISTERED = datetime(2026, 9, 30, 10, tzinfo=CHINA)
WARNING = datetime(2026, 10, 20, 23, 59, 59, 999999, tzinfo=CHINA)  # 3 working days before 23 Oct
CHASE = datetime(2026, 10, 23, 23, 59, 59, 999999, tzinfo=CHINA)
N = 23  # three batches of 10, the last one short


@pytest.fixture()
def factory(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = create_engine(database_url)
    metadata.create_all(engine)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


def outbox_envelopes(factory: sessionmaker[Session]) -> list[events_pb2.EventEnvelope]:
    with factory() as s:
        bodies = s.scalars(select(outbox.c.body).order_by(outbox.c.position)).all()
    found = []
    for body in bodies:
        env = events_pb2.EventEnvelope()
        env.ParseFromString(body)
        found.append(env)
    return found


def test_every_work_order_of_several_batches_is_warned_then_chased_once(factory: sessionmaker[Session]) -> None:
    county = routing_for("511102")
    case_ids = [f"511102-20260930-{i:06d}" for i in range(N)]
    for case_id in case_ids:
        arrive(factory, county, case(case_id, hotline=True), REGISTERED)

    def sweep(now: datetime) -> handlers.SweepReport:
        return handlers.run_sweep(
            uow_factory=lambda: SqlRoutingUnitOfWork(factory, node="511102"), routing=county, now=now, batch_size=10
        )

    assert (sweep(WARNING).warnings, sweep(WARNING).warnings) == (N, 0)
    report = sweep(CHASE)
    assert (report.scanned, report.chases, report.warnings) == (N, N, 0)
    assert sweep(CHASE).chases == 0

    with factory() as s:
        actions = Counter(s.scalars(select(WorkOrderHistoryRow.action)).all())
        chases = s.scalar(select(func.count()).select_from(SupervisionRow).where(SupervisionRow.level == "chase"))
    assert (actions["warning:hotline_complaint"], actions["chase:hotline_complaint"], chases) == (N, N, N)

    by_case: dict[str, list[events_pb2.EventEnvelope]] = {}
    for env in outbox_envelopes(factory):
        by_case.setdefault(env.case_id, []).append(env)
    assert sorted(by_case) == case_ids
    for case_id, envs in by_case.items():
        # Contiguous versions, in outbox order, across the single writes and the bulk ones (a folded
        # placement stands for the versions of its three events).
        versions = [one.version for e in envs for one in unfolded(e)]
        assert versions == list(range(2, 2 + len(versions))), case_id
        assert [e.WhichOneof("payload") for e in envs][-3:] == [
            "deadline_warning",
            "deadline_warning",
            "supervision_issued",
        ]
        assert [e.deadline_warning.stage for e in envs[-3:-1]] == ["warning", "chase"]

    with SqlRoutingUnitOfWork(factory, node="511102") as uow:
        stored = uow.get(handlers.work_order_id_for(case_ids[-1], "511102"))
    assert stored is not None and stored.order.version == 5  # register, accept, assign, warning, chase
    assert stored.next_sweep_at is not None and stored.next_sweep_at > CHASE  # the supervision boundary


def test_bulk_append_holds_the_same_case_lock_as_a_single_append(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    metadata.create_all(engine)
    factory = sessionmaker(engine)
    event = BusEvent(event_id="e-1", source="routing", event_type="deadline_warning", body=b"x")
    try:
        with factory() as holder, factory() as other:
            holder.begin()
            append_events(holder, outbox, [(event, "511102-20261122-000001")])
            taken = select(func.pg_try_advisory_xact_lock(_pg_lock_key("append", outbox, "511102-20261122-000001")))
            assert other.execute(taken).scalar_one() is False  # held until the bulk writer commits
            free = select(func.pg_try_advisory_xact_lock(_pg_lock_key("append", outbox, "511102-20261122-000002")))
            assert other.execute(free).scalar_one() is True  # other cases do not wait
            other.rollback()
            holder.commit()
            assert other.execute(taken).scalar_one() is True
            other.rollback()
    finally:
        engine.dispose()
