"""Routing's use cases on a real database (SQLite and PostgreSQL): placement, hand-off, repeats, sweep, calendar."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest
from lianxin.events.v1 import events_pb2
from sqlalchemy import create_engine, event, func, select
from sqlalchemy.orm import Session, sessionmaker

from services.common.inbox import consume_batch
from services.common.service import BusEvent
from services.common.timeutil import CHINA
from services.routing import handlers
from services.routing.consumers import RoutingConsumers
from services.routing.domain import State
from services.routing.domain.timelimits import TimeLimitPolicy, TimeRules
from services.routing.models import inbox, metadata, outbox
from services.routing.provisional import ProvisionalCalendar
from services.routing.store import SqlRoutingUnitOfWork
from tests.support.routing_store import arrive, case, routing_for

FIXTURE_2027 = Path(__file__).parent.parent / "fixtures" / "calendar_2027_fixture.yaml"
TICK = timedelta(microseconds=1)


def eod(d: date) -> datetime:
    return datetime.combine(d, time.max, tzinfo=CHINA)


@pytest.fixture()
def factory(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = create_engine(database_url)
    metadata.create_all(engine)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


def events(factory: sessionmaker[Session], case_id: str) -> list[events_pb2.EventEnvelope]:
    with factory() as s:
        rows = s.execute(select(outbox).order_by(outbox.c.position)).mappings().all()
    out = []
    for r in rows:
        env = events_pb2.EventEnvelope()
        env.ParseFromString(r["body"])
        if env.case_id == case_id:
            out.append(env)
    return out


def test_case_below_the_node_is_handed_down_with_next_epoch_and_no_personal_data(
    factory: sessionmaker[Session],
) -> None:
    city = routing_for("511100")
    stored = arrive(factory, city, case("511100-20261122-000001", version=3), datetime(2026, 11, 23, 2, tzinfo=CHINA))
    assert stored.order.state is State.TRANSFERRED
    envs = events(factory, "511100-20261122-000001")
    assert [e.WhichOneof("payload") for e in envs] == ["work_order_created", "work_order_changed", "case_handed_off"]
    assert [e.version for e in envs] == [4, 5, 6]
    hand_off = envs[-1].case_handed_off
    assert (hand_off.from_node, hand_off.to_node, hand_off.new_owner_epoch, hand_off.kind) == (
        "511100",
        "511102",
        2,
        "assign_down",
    )
    assert hand_off.case.case_id == "511100-20261122-000001"
    assert not hand_off.case.complainant.phone
    assert hand_off.from_work_order_id == handlers.work_order_id_for("511100-20261122-000001", "511100")


def test_unplaceable_case_waits_in_the_manual_queue(factory: sessionmaker[Session]) -> None:
    county = routing_for("511102")
    stored = arrive(factory, county, case("511102-20261122-000002", region=""), datetime(2026, 11, 23, 2, tzinfo=CHINA))
    assert stored.order.state is State.REGISTERED and stored.manual_queue
    assert "no region" in stored.manual_reason
    (created,) = [e.work_order_created for e in events(factory, "511102-20261122-000002")]
    assert created.manual_queue and created.unit_id == ""
    assigned = arrive(factory, county, case("511102-20261122-000003"), datetime(2026, 11, 23, 2, tzinfo=CHINA))
    created = events(factory, "511102-20261122-000003")[0].work_order_created
    assert (created.manual_queue, created.unit_id) == (False, assigned.order.unit_id)


def test_second_unresolved_repeat_escalates_to_supervision_by_the_tier_above(factory: sessionmaker[Session]) -> None:
    county = routing_for("511102")
    now = datetime(2026, 11, 23, 10, tzinfo=CHINA)
    arrive(factory, county, case("511102-20261122-000010"), now)
    arrive(factory, county, case("511102-20261122-000011", repeat_of="511102-20261122-000010"), now)
    with SqlRoutingUnitOfWork(factory, node="511102") as uow:
        assert uow.list_supervisions(case_id="", region_prefix="", after=None, limit=10)[0] == []
    arrive(factory, county, case("511102-20261122-000012", repeat_of="511102-20261122-000010"), now)
    with SqlRoutingUnitOfWork(factory, node="511102") as uow:
        found, _ = uow.list_supervisions(case_id="511102-20261122-000010", region_prefix="", after=None, limit=10)
    assert [(s.level, s.by_node) for s in found] == [("supervise", "511100")]
    issued = [e for e in events(factory, "511102-20261122-000010") if e.WhichOneof("payload") == "supervision_issued"]
    assert len(issued) == 1 and issued[0].supervision_issued.by_node == "511100"
    versions = [e.version for e in events(factory, "511102-20261122-000010")]
    assert versions == list(range(versions[0], versions[0] + len(versions)))


def test_sweep_fires_warning_chase_and_supervision_exactly_at_each_boundary(factory: sessionmaker[Session]) -> None:
    county = routing_for("511102")
    registered_at = datetime(2026, 9, 30, 10, tzinfo=CHINA)
    # A 12345 complaint: 13 working days across 国庆 2026 (1-7 Oct off), whose make-up Saturday 10 Oct counts.
    stored = arrive(factory, county, case("511102-20260930-000001", hotline=True), registered_at)
    wo = stored.order.id

    def uow_factory() -> SqlRoutingUnitOfWork:
        return SqlRoutingUnitOfWork(factory, node="511102")

    with uow_factory() as uow:
        s = uow.get(wo)
        assert s is not None
    assert s.order.deadlines["hotline_complaint"] == eod(date(2026, 10, 23))
    warning = eod(date(2026, 10, 20))  # 3 working days ahead (20% of 13, rounded up)
    chase = eod(date(2026, 10, 23))
    supervision = eod(date(2026, 10, 27))  # 2 working days after the due day (Mon 26, Tue 27)

    def sweep(now: datetime) -> handlers.SweepReport:
        return handlers.run_sweep(uow_factory=uow_factory, routing=county, now=now)

    assert sweep(warning - TICK).warnings == 0
    assert sweep(warning).warnings == 1
    assert sweep(warning + TICK).warnings == 0  # fired once
    assert sweep(chase - TICK).chases == 0
    report = sweep(chase)
    assert (report.chases, report.overdue) == (1, 0)
    assert sweep(chase + TICK).overdue == 1
    assert sweep(supervision - TICK).supervisions == 0
    assert sweep(supervision).supervisions == 1
    assert sweep(supervision + timedelta(days=30)).supervisions == 0
    with uow_factory() as uow:
        found, _ = uow.list_supervisions(case_id=stored.order.case_id, region_prefix="5111", after=None, limit=10)
        actions = [h.action for h in (uow.get(wo) or s).order.history]
    assert sorted((x.level, x.by_node) for x in found) == [("chase", "511102"), ("supervise", "511100")]
    assert actions[-3:] == ["warning:hotline_complaint", "chase:hotline_complaint", "supervision:hotline_complaint"]
    kinds = [e.WhichOneof("payload") for e in events(factory, stored.order.case_id)]
    assert kinds.count("deadline_warning") == 3 and kinds.count("supervision_issued") == 2


def test_2027_deadline_is_provisional_then_recomputed_when_the_calendar_is_loaded(
    factory: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    calendar = ProvisionalCalendar()
    county = routing_for("511102", calendar)
    now = datetime(2026, 11, 22, 11, tzinfo=CHINA)
    stored = arrive(factory, county, case("511102-20261122-000020"), now)  # a petition: settle in 60 days
    assert stored.order.state is State.ASSIGNED
    assert "settle" in stored.provisional
    assert "provisional deadline" in stored.order.history[-1].reason
    assert (
        "no official calendar for 2027: deadlines are provisional until one is loaded "
        "(lianxin calendar load, or LIANXIN_CALENDAR_FILES)" in caplog.text
    )
    # Mon-Fri fallback: 60 days from 22 Nov 2026 is Thu 21 Jan 2027, a weekday.
    assert stored.order.deadlines["settle"] == eod(date(2027, 1, 21))
    calendar.official.load(FIXTURE_2027)

    def uow_factory() -> SqlRoutingUnitOfWork:
        return SqlRoutingUnitOfWork(factory, node="511102")

    report = handlers.run_sweep(uow_factory=uow_factory, routing=county, now=now + timedelta(hours=1))
    assert report.recomputed == 1
    with uow_factory() as uow:
        after = uow.get(stored.order.id)
    assert after is not None and after.provisional == ()
    assert after.order.history[-1].action == "recompute_deadlines"


def test_fifteen_working_days_across_2027_spring_festival_from_a_calendar_file() -> None:
    policy = TimeLimitPolicy.from_dict({"limits": {"hotline_complaint": "15 working days"}})
    start = datetime(2027, 1, 29, 9, tzinfo=CHINA)  # Friday before the fixture's 春节 (5-12 Feb)
    fallback = TimeRules(policy, ProvisionalCalendar())
    official = TimeRules(policy, ProvisionalCalendar.with_files([str(FIXTURE_2027)]))
    from services.routing.domain.timelimits import DeadlineKind

    # Make-up Sunday 31 Jan and Saturday 20 Feb count; 5-12 Feb do not.
    assert official.deadline(DeadlineKind.HOTLINE_COMPLAINT, start) == eod(date(2027, 2, 25))
    assert fallback.deadline(DeadlineKind.HOTLINE_COMPLAINT, start) == eod(date(2027, 2, 19))
    assert fallback.calendar.is_provisional(eod(date(2027, 2, 19)))  # type: ignore[attr-defined]


def test_a_replica_owner_is_kept_only_when_its_epoch_and_version_are_newer(factory: sessionmaker[Session]) -> None:
    def note(node: str, epoch: int, version: int) -> None:
        with SqlRoutingUnitOfWork(factory, node="510000") as uow:
            uow.note_owner(handlers.CaseOwner("511102-20261206-000001", node, epoch, version))
            uow.commit()

    def known() -> tuple[str, int, int] | None:
        with SqlRoutingUnitOfWork(factory, node="510000") as uow:
            owner = uow.case_owner("511102-20261206-000001")
        return None if owner is None else (owner.owner_node, owner.owner_epoch, owner.version)

    note("511102", 1, 2)
    assert known() == ("511102", 1, 2)
    note("511102", 1, 4)
    assert known() == ("511102", 1, 4)
    note("511100", 1, 3)  # an older version arriving late changes nothing
    assert known() == ("511102", 1, 4)
    note("511100", 2, 1)  # a hand-off's new epoch wins whatever its version
    assert known() == ("511100", 2, 1)
    note("511102", 1, 9)
    assert known() == ("511100", 2, 1)


# Routing's replicas of the subtree's handling at a city: the owner they name is kept once, without an
# inbox row, and a replica naming this node opens no transaction at all.
CITY = "511100"
OWNED_BELOW = "511102-20261206-000001"


def consumers(factory: sessionmaker[Session]) -> RoutingConsumers:
    return RoutingConsumers(
        routing=routing_for(CITY),
        session_factory=factory,
        unit_of_work=lambda session: SqlRoutingUnitOfWork(session=session, node=CITY),
        clock=lambda: datetime(2026, 12, 6, 12, tzinfo=UTC),
    )


def replica(event_id: str, owner: str, epoch: int, version: int) -> BusEvent:
    env = events_pb2.EventEnvelope(case_id=OWNED_BELOW, owner_node=owner, owner_epoch=epoch, version=version)
    env.work_order_changed.work_order_id = "wo-1"
    return BusEvent(event_id, "exchange", "work_order_changed", env.SerializeToString())


def owner_known(factory: sessionmaker[Session]) -> tuple[str, int, int] | None:
    with SqlRoutingUnitOfWork(factory, node=CITY) as uow:
        owner = uow.case_owner(OWNED_BELOW)
    return None if owner is None else (owner.owner_node, owner.owner_epoch, owner.version)


def inbox_rows(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(inbox)) or 0)


def test_a_replica_owner_is_kept_once_without_an_inbox_row_and_one_naming_this_node_opens_nothing(
    factory: sessionmaker[Session],
) -> None:
    opened: list[int] = []
    event.listen(factory, "after_begin", lambda *_: opened.append(1))
    on_replica = consumers(factory).on_replica_owner

    on_replica(replica("e-1", "511102", 1, 3))
    on_replica(replica("e-1", "511102", 1, 3))  # redelivered

    def three_in_a_batch() -> None:
        for version in (5, 4, 5):
            on_replica(replica(f"e-{version}", "511102", 1, version))

    assert consume_batch(three_in_a_batch)
    assert len(opened) == 3  # two on their own, one for the batch
    assert owner_known(factory) == ("511102", 1, 5)  # the older version arriving late changed nothing

    del opened[:]
    on_replica(replica("e-9", CITY, 2, 9))  # the city's own case: nothing to keep here
    on_replica(replica("e-10", "", 0, 10))
    assert consume_batch(lambda: on_replica(replica("e-11", CITY, 2, 11)))
    assert opened == []
    assert owner_known(factory) == ("511102", 1, 5)
    assert inbox_rows(factory) == 0
