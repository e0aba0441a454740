"""Exchange recording the events of its node's bus in the consumer's transaction, on both backends.

Inside the relay's ``consume_batch`` a pass's events to exchange are appended to the up-log in one
transaction and one commit; the parent link is woken once, after that commit (never before the rows
are visible), and a child's long poll is told of a hand-off queued down for it only then. Outside a
batch each event is a transaction of its own, as before. A batch that fails keeps nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from lianxin.events.v1 import events_pb2
from sqlalchemy import event

from services.common.db import make_engine, make_session_factory
from services.common.inbox import consume_batch
from services.common.migrations import upgrade
from services.common.regions import RegionTree
from services.exchange.store import ExchangeStore

CITY, COUNTY = "511100", "511102"


def _event(case: int, number: int, hand_off: events_pb2.CaseHandedOff | None = None) -> events_pb2.EventEnvelope:
    env = events_pb2.EventEnvelope(
        event_id=str(uuid.uuid4()),
        case_id=f"{CITY}-20261206-{case:06d}",
        version=number,
        owner_node=CITY,
        owner_epoch=1,
        origin_node=CITY,
        origin_service="routing",
    )
    if hand_off is None:
        env.work_order_created.SetInParent()
    else:
        env.case_handed_off.CopyFrom(hand_off)
    return env


class Watched:
    """A city's exchange store whose commits are counted and whose link wake-ups see what is committed."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url, service="exchange")
        upgrade(self.engine, "exchange")
        self.commits = 0
        event.listen(self.engine, "commit", self._committed)
        self.store = ExchangeStore(
            make_session_factory(self.engine), node=CITY, regions=RegionTree.load(), clock=lambda: datetime.now(UTC)
        )
        self.visible_at_wake: list[int] = []
        self.store.wake_link = self._woken

    def _committed(self, _conn: object) -> None:
        self.commits += 1

    def _woken(self) -> None:
        # What the link would read now, on a read-only transaction of its own.
        self.visible_at_wake.append(len(self.store.pending_up(0, 100)))


@pytest.fixture()
def city(database_url: str) -> Iterator[Watched]:
    watched = Watched(database_url)
    yield watched
    watched.engine.dispose()


def test_a_pass_s_events_are_appended_in_one_commit_and_the_link_woken_once_after_it(city: Watched) -> None:
    events = [_event(1, n) for n in (1, 2, 3)]

    def deliver() -> None:
        for env in events:
            city.store.record_delivered(env, env.SerializeToString())

    commits = city.commits
    assert consume_batch(deliver)
    assert city.commits == commits + 1
    assert city.visible_at_wake == [3]
    assert [item.case_sequence for item in city.store.pending_up(0, 100)] == [1, 2, 3]
    # Delivered again (the relay's retry): nothing appended, nobody woken.
    assert consume_batch(deliver)
    assert city.visible_at_wake == [3]


def test_outside_a_batch_each_event_commits_on_its_own_and_wakes_after_its_commit(city: Watched) -> None:
    commits = city.commits
    for n in (1, 2):
        env = _event(2, n)
        assert city.store.record_delivered(env, env.SerializeToString())
    assert city.commits == commits + 2
    assert city.visible_at_wake == [1, 2]


def test_a_hand_off_queued_down_is_announced_to_the_child_after_the_batch_commits(city: Watched) -> None:
    hand_off = _event(
        3,
        1,
        events_pb2.CaseHandedOff(from_node=CITY, to_node=COUNTY, new_owner_epoch=2, kind="assign_down"),
    )
    changes = city.store.down_changes
    seen = changes.seen(COUNTY)
    told_inside: list[int] = []

    def deliver() -> None:
        city.store.record_delivered(hand_off, hand_off.SerializeToString())
        told_inside.append(changes.seen(COUNTY))

    assert consume_batch(deliver)
    assert told_inside == [seen]  # not while the batch was open: the child would read nothing yet
    assert changes.seen(COUNTY) == seen + 1
    items, _ = city.store.pull_down(COUNTY, 0, 10)
    assert [item.body for item in items] == [hand_off.SerializeToString()]


def test_a_batch_that_fails_keeps_nothing_and_wakes_nobody(city: Watched) -> None:
    env = _event(4, 1)

    def deliver() -> None:
        city.store.record_delivered(env, env.SerializeToString())
        raise RuntimeError("a later handler of the batch failed")

    assert not consume_batch(deliver)
    assert city.store.pending_up(0, 100) == []
    assert city.visible_at_wake == []
