"""A placement folded into its creation (issue 21): one ``work_order_created`` carrying 受理 and 交办
reads, at every reader that interprets it, as the three events it replaced."""

from __future__ import annotations

from lianxin.national.v1 import national_service_pb2 as national_pb2

from bench.case_steps import placement_events
from services.common.events import folded, last_unfolded, placement_step_id, unfolded
from services.exchange import domain
from services.exchange.digests import summarise_case
from services.exchange.mapping import held_event
from services.exchange.national import _positioned_reports, national_reports
from services.exchange.ports import ENVELOPE, Item
from services.intake.consumers import handling_change, handling_changes
from services.stats.translate import case_events_of, to_case_event

CASE = "511102-20261207-000001"


def test_unfolded_gives_back_the_three_events_with_their_versions() -> None:
    three = placement_events(CASE)
    one = folded(three)
    assert (one.version, one.event_id) == (4, three[0].event_id)
    again = unfolded(one)
    assert [e.version for e in again] == [2, 3, 4]
    assert again[0].event_id == one.event_id
    assert [e.event_id for e in again[1:]] == [placement_step_id(one.event_id, n) for n in (1, 2)]
    for before, after in zip(three, again, strict=True):
        assert after.WhichOneof("payload") == before.WhichOneof("payload")
        kind = before.WhichOneof("payload") or ""
        assert getattr(after, kind) == getattr(before, kind)
        assert (after.case_id, after.owner_node, after.owner_epoch, after.occurred_at) == (
            before.case_id,
            before.owner_node,
            before.owner_epoch,
            before.occurred_at,
        )
    assert unfolded(three[1]) == [three[1]]  # an event as published before: itself
    assert last_unfolded(one) == again[-1]  # the latest state alone, built the same way
    assert last_unfolded(three[1]) is three[1]


def test_intake_and_the_warehouse_read_the_three_events() -> None:
    three = placement_events(CASE)
    one = folded(three)
    assert handling_changes(one) == [handling_change(e) for e in three]
    events = case_events_of(one.SerializeToString())
    assert events == tuple(to_case_event(e) for e in three)
    assert [e.version for e in events] == [2, 3, 4]


def test_the_digest_of_a_folded_placement_says_what_the_three_said() -> None:
    three = placement_events(CASE)
    one = folded(three)
    before = summarise_case(CASE, [h for e in three if (h := held_event(e.SerializeToString()))], "")
    after = summarise_case(CASE, [h for e in [one] if (h := held_event(e.SerializeToString()))], "")
    assert (after.version, after.owner_node, after.owner_epoch, after.state, after.work_orders) == (
        before.version,
        before.owner_node,
        before.owner_epoch,
        before.state,
        before.work_orders,
    )
    assert after.state == "ASSIGNED" and after.events == 1


def test_the_national_system_gets_the_three_reports_and_the_cursor_waits_for_all_three() -> None:
    three = placement_events(CASE)
    one = folded(three)
    before = [r for e in three for r in national_reports(e.SerializeToString())]
    after = national_reports(one.SerializeToString())
    assert [(r.version, r.state) for r in after] == [(r.version, r.state) for r in before]
    assert [r.report_id for r in after] == [e.event_id for e in unfolded(one)]
    assert after[0].report_id == one.event_id
    rows = [Item(11, ENVELOPE, three[0].SerializeToString(), 1), Item(12, ENVELOPE, one.SerializeToString(), 2)]
    reports = _positioned_reports(rows, 10)
    assert [position for position, _ in reports] == [11, 11, 11, 12]
    ids = [r.report_id for _, r in reports if isinstance(r, national_pb2.NationalCaseReport)]
    # The folded row's second report not acknowledged: the cursor stays after the row before it.
    assert domain.acked_prefix([(p, r.report_id if r else None) for p, r in reports], {ids[0], ids[1]}, 10) == 11
    assert domain.acked_prefix([(p, r.report_id if r else None) for p, r in reports], set(ids), 10) == 12
