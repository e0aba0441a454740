"""Exchange's use cases over an in-memory unit of work: what an operator or a parent node notices,
without a database.

The same behaviour runs on SQLite and PostgreSQL through real linked nodes in
tests/integration/test_exchange_*.py; these are the fast layer of the pyramid.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from lianxin.events.v1 import events_pb2

from services.common.regions import RegionTree
from services.exchange.handlers import RECEIVE_CHUNK, Exchange
from services.exchange.ports import COMMAND, ENVELOPE, ExchangeDeps, Item
from tests.support.exchange import FakeExchangeStore

NOW = datetime(2026, 12, 6, 2, 0, tzinfo=UTC)
PROVINCE, CITY, COUNTY = "510000", "511100", "511102"  # 四川省, 乐山市, 市中区
ELSEWHERE = "110000"  # 北京市: not in the node's region tree
CASE = "511102-20261206-000001"


@pytest.fixture(scope="module")
def regions() -> RegionTree:
    return RegionTree.load()


class Woken:
    def __init__(self) -> None:
        self.relay = 0

    def __call__(self) -> None:
        self.relay += 1


def exchange(regions: RegionTree, node: str = CITY) -> tuple[Exchange, FakeExchangeStore, Woken]:
    store = FakeExchangeStore(node=node, clock=lambda: NOW)
    woken = Woken()
    return Exchange(store.unit_of_work, ExchangeDeps(node, regions, lambda: NOW), notify=woken), store, woken


def registered(number: int, *, case_id: str = CASE, owner: str = COUNTY, epoch: int = 1) -> bytes:
    return events_pb2.EventEnvelope(
        event_id=f"{case_id}#{number}",
        case_id=case_id,
        version=number,
        owner_node=owner,
        owner_epoch=epoch,
        origin_node=COUNTY,
        case_registered=events_pb2.CaseRegistered(),
    ).SerializeToString()


def pushed(*numbers: int, start: int = 1, **kwargs: object) -> list[Item]:
    return [
        Item(start + i, ENVELOPE, registered(n, **kwargs), n)  # type: ignore[arg-type]
        for i, n in enumerate(numbers)
    ]


def hand_off(to_node: str, epoch: int, *, event: str = "h1") -> bytes:
    return events_pb2.EventEnvelope(
        event_id=event,
        case_id=CASE,
        version=3,
        owner_node=PROVINCE,
        owner_epoch=epoch - 1,
        origin_node=PROVINCE,
        case_handed_off=events_pb2.CaseHandedOff(
            from_node=PROVINCE, to_node=to_node, new_owner_epoch=epoch, kind="assign_down"
        ),
    ).SerializeToString()


def command(command_id: str, target: str, *, epoch_seen: int = 1) -> bytes:
    return events_pb2.Command(
        command_id=command_id,
        case_id=CASE,
        target_node=target,
        owner_epoch_seen=epoch_seen,
        supervise=events_pb2.Command.Supervise(level="chase"),
    ).SerializeToString()


def test_a_large_push_is_stored_in_transactions_of_a_bounded_size(regions: RegionTree) -> None:
    city, store, woken = exchange(regions)
    count = RECEIVE_CHUNK * 2 + 50
    items = [Item(n, ENVELOPE, registered(1, case_id=f"{COUNTY}-20261206-{n:06d}"), 1) for n in range(1, count + 1)]
    commits = store.commits
    assert city.receive_push(COUNTY, items) == (count, [])
    assert store.commits - commits == 3  # RECEIVE_CHUNK items each, every one with the child's cursor
    assert [item.position for item in city.pending_up(0, count)] == list(range(1, count + 1))
    assert city.receive_push(COUNTY, items[120:]) == (count, [])  # a resend: stored nothing twice
    assert len(store.tables.replicas) == count and woken.relay == 3


def test_a_childs_events_are_stored_once_passed_on_and_published(regions: RegionTree) -> None:
    city, store, woken = exchange(regions)
    acked, rejected = city.receive_push(COUNTY, pushed(1, 2))
    assert (acked, rejected) == (2, [])
    # A resend after a lost answer is acknowledged again and stores nothing twice.
    assert city.receive_push(COUNTY, pushed(1, 2)) == (2, [])
    assert [r.event.event_id for _, r, _ in store.tables.replicas] == [f"{CASE}#1", f"{CASE}#2"]
    assert [event_id for event_id, *_ in store.tables.outbox] == [f"{CASE}#1", f"{CASE}#2"]
    # They travel on to the province, numbered on this node's own up-log.
    assert [(i.position, i.case_sequence) for i in city.pending_up(0, 10)] == [(1, 1), (2, 2)]
    assert woken.relay == 1 and city.cursor(COUNTY, "child_up").position == 2


def test_a_gap_is_quarantined_with_its_reason_and_nothing_after_it_applies(regions: RegionTree) -> None:
    city, store, _ = exchange(regions)
    acked, rejected = city.receive_push(COUNTY, pushed(1, 3, 4))
    assert acked == 3
    assert [(r.position, r.reason) for r in rejected] == [
        (2, "sequence gap: #3 after #1"),
        (3, "sequence gap: #4 after #1"),
    ]
    rows, total = city.list_quarantine(COUNTY)
    assert total == 2 and [r.summary for r in rows] == [
        f"case_registered {CASE} v3 #3",
        f"case_registered {CASE} v4 #4",
    ]
    assert city.quarantined_counts() == {COUNTY: 2}
    assert len(store.tables.replicas) == 1


def test_discarding_the_missing_event_releases_the_ones_held_behind_it(regions: RegionTree) -> None:
    city, store, _ = exchange(regions)
    # #2 names the province as owner: forged, quarantined; #3 and #4 wait behind it as gaps.
    city.receive_push(COUNTY, [*pushed(1), *pushed(2, start=2, owner=PROVINCE), *pushed(3, 4, start=3)])
    rows, _ = city.list_quarantine(COUNTY)
    assert [r.reason.split(":")[0] for r in rows] == ["forged owner", "sequence gap", "sequence gap"]
    outcome = city.discard([rows[0].id], actor="ops-1", note="伪造的承办单位")[0]
    assert outcome.discarded and outcome.released == [rows[1].id, rows[2].id] and outcome.still_held == []
    assert city.list_quarantine(COUNTY) == ([], 0)
    assert [r.event.case_sequence for _, r, _ in store.tables.replicas] == [1, 3, 4]
    assert store.tables.skips == [(COUNTY, CASE, 2)]


def test_a_later_event_cannot_be_discarded_before_the_one_missing_before_it(regions: RegionTree) -> None:
    city, _, _ = exchange(regions)
    city.receive_push(COUNTY, [*pushed(1), *pushed(2, start=2, owner=PROVINCE), *pushed(3, start=3)])
    rows, _ = city.list_quarantine(COUNTY)
    refused = city.discard([rows[1].id], actor="ops-1", note="skip")[0]
    assert (
        not refused.discarded and refused.reason == "#2 of the case is still in quarantine: replay or discard it first"
    )


def test_replay_applies_an_item_once_what_it_missed_has_arrived(regions: RegionTree) -> None:
    city, store, _ = exchange(regions)
    city.receive_push(COUNTY, pushed(2, start=2))
    rows, _ = city.list_quarantine(COUNTY)
    assert [r.reason for r in rows] == ["sequence gap: #2 after #0"]
    city.receive_push(COUNTY, pushed(1, start=1))  # already acknowledged up to 2: skipped as a resend
    assert city.replay([rows[0].id])[0].applied is False
    city.receive_push(COUNTY, pushed(1, start=3))
    outcome = city.replay([rows[0].id])[0]
    assert outcome.applied and city.list_quarantine(COUNTY) == ([], 0)
    assert city.replay([rows[0].id])[0].reason == "not in quarantine"
    assert [r.event.case_sequence for _, r, _ in store.tables.replicas] == [1, 2]


def test_a_push_from_a_node_that_is_not_a_direct_child_is_refused_whole(regions: RegionTree) -> None:
    province, store, woken = exchange(regions, PROVINCE)
    _, rejected = province.receive_push(COUNTY, pushed(1))
    assert [r.reason for r in rejected] == [f"unknown node: {COUNTY} is not a direct child of {PROVINCE}"]
    assert store.tables.replicas == [] and woken.relay == 0


def test_a_hand_off_from_above_goes_down_toward_its_new_owner_and_is_published_here(regions: RegionTree) -> None:
    city, store, _ = exchange(regions)
    assert city.apply_down(PROVINCE, [Item(1, ENVELOPE, hand_off(COUNTY, 2))]) == 1
    assert city.known_owner(CASE) == (2, COUNTY)
    assert [(event_type, case_id) for _, event_type, case_id, _ in store.tables.outbox] == [("case_handed_off", CASE)]
    assert store.announced == [COUNTY]  # the county's long poll is woken after the commit
    items, head = city.pull_down(COUNTY, 0, 10)
    assert [i.kind for i in items] == [ENVELOPE] and head == 1
    # Applied once: the same position again changes nothing; an older epoch is quarantined.
    assert city.apply_down(PROVINCE, [Item(1, ENVELOPE, hand_off(COUNTY, 2))]) == 1
    city.apply_down(PROVINCE, [Item(2, ENVELOPE, hand_off(COUNTY, 1, event="h0"))])
    rows, _ = city.list_quarantine(PROVINCE)
    assert [r.reason for r in rows] == ["stale owner: hand-off epoch 1 < known 2"]


def test_a_command_follows_the_case_to_its_newer_owner_and_is_delivered_once(regions: RegionTree) -> None:
    city, store, _ = exchange(regions)
    city.apply_down(PROVINCE, [Item(1, ENVELOPE, hand_off(COUNTY, 2))])
    # Issued for the city at epoch 1: the city knows the county owns it since epoch 2, so down it goes.
    assert city.record_command(command("c1", CITY)) is None
    down, _ = city.pull_down(COUNTY, 1, 10)
    assert [i.kind for i in down] == [COMMAND]
    sent = events_pb2.Command.FromString(down[0].body)
    assert (sent.target_node, sent.owner_epoch_seen) == (COUNTY, 2)
    # A command for the city itself is published to its services once, however often it arrives.
    assert city.record_command(command("c2", CITY, epoch_seen=2)) is None
    assert city.record_command(command("c2", CITY, epoch_seen=2)) is None
    assert [event_id for event_id, event_type, *_ in store.tables.outbox if event_type == COMMAND] == ["c2"]


def test_a_command_that_cannot_get_anywhere_is_kept_for_an_operator(regions: RegionTree) -> None:
    county, _, _ = exchange(regions, COUNTY)
    reason = county.record_command(command("c3", ELSEWHERE))
    assert reason == f"unknown node: command target {ELSEWHERE}"
    rows, _ = county.list_quarantine("local")
    assert [r.reason for r in rows] == [reason] and rows[0].summary == f"command supervise {CASE} → {ELSEWHERE}"
    assert county.record_command(b"\xff not a command") == "malformed payload: not a command"


def test_local_events_go_up_in_order_and_a_batch_is_cut_at_its_byte_limit(regions: RegionTree) -> None:
    county, _, _ = exchange(regions, COUNTY)
    bodies = [registered(n) for n in (1, 2, 3)]
    added = county.record_local_batch([(events_pb2.EventEnvelope.FromString(b), b) for b in bodies])
    assert added == 3 and county.head_up() == 3
    assert county.record_local(events_pb2.EventEnvelope.FromString(bodies[0]), bodies[0]) is False
    assert [i.case_sequence for i in county.pending_up(0, 10)] == [1, 2, 3]
    assert len(county.pending_up(0, 10, max_bytes=1)) == 1  # at least one item, however large
    assert [s.case_id for s in county.case_digests()] == [CASE]
    assert county.up_backlog(1) == (2, 0.0)
