"""Exchange rules without servers: what a parent accepts from a child, where down items go, backoff, packages."""

from __future__ import annotations

import random

import pytest

from services.common.regions import RegionTree
from services.exchange import domain
from services.exchange.package import PackageRefused, open_package, seal

REGIONS = RegionTree.load()
NOTHING = domain.CaseKnowledge(event_id_at_sequence=None, last_sequence=None, known_epoch=None, already_stored=False)


def event(**changes: object) -> domain.InboundEvent:
    fields: dict[str, object] = dict(
        event_id="e1", case_id="511102-20261122-000001", version=1, owner_epoch=1,
        owner_node="511102", origin_node="511102", event_type="case_registered", case_sequence=1,
    )  # fmt: skip
    fields.update(changes)
    return domain.InboundEvent(**fields)  # type: ignore[arg-type]


def judge(ev: domain.InboundEvent, known: domain.CaseKnowledge = NOTHING, child: str = "511102") -> domain.Decision:
    return domain.judge_event_from_child(ev, child=child, receiver="511100", regions=REGIONS, known=known)


def test_event_from_the_subtree_is_applied() -> None:
    assert judge(event()).verdict is domain.Verdict.APPLY


@pytest.mark.parametrize(
    ("ev", "child", "reason"),
    [
        (event(), "510104", "unknown node"),
        (event(origin_node="511111"), "511102", "out of subtree"),
        (event(owner_node="511111"), "511102", "forged owner"),
        (event(case_id=""), "511102", "malformed payload"),
        (event(case_sequence=0), "511102", "malformed payload"),
    ],
)
def test_bad_identity_is_refused_with_reason(ev: domain.InboundEvent, child: str, reason: str) -> None:
    decision = judge(ev, child=child)
    assert decision.verdict is domain.Verdict.REFUSE and decision.reason.startswith(reason)


@pytest.mark.parametrize(
    "event_type", ["case_evaluated", "review_requested", "case_withdrawn", "visit_booked", "visit_outcome_recorded"]
)
def test_a_citizens_request_or_visit_at_the_registering_node_is_judged_by_origin_not_owner(event_type: str) -> None:
    """After 上报 the county's rating names the city (its parent) as owner at the new epoch: still applied."""
    escalated = domain.CaseKnowledge(event_id_at_sequence=None, last_sequence=2, known_epoch=2, already_stored=False)
    above = event(event_type=event_type, owner_node="511100", owner_epoch=2, case_sequence=3)
    assert judge(above, escalated).verdict is domain.Verdict.APPLY
    stale = event(event_type=event_type, owner_node="511102", owner_epoch=1, case_sequence=3)
    assert judge(stale, escalated).verdict is domain.Verdict.APPLY
    # Its origin must still be under the pushing child, and an owner's write still may not name an outsider.
    assert judge(event(event_type=event_type, origin_node="511111")).reason.startswith("out of subtree")
    assert judge(event(event_type="work_order_changed", owner_node="511100"), escalated).reason.startswith(
        "forged owner"
    )


def test_per_case_order_is_the_links_sequence_and_epochs_only_rise() -> None:
    known = domain.CaseKnowledge(event_id_at_sequence=None, last_sequence=2, known_epoch=3, already_stored=False)
    assert judge(event(case_sequence=3, owner_epoch=3), known).verdict is domain.Verdict.APPLY
    assert judge(event(case_sequence=4, owner_epoch=3), known).reason.startswith("sequence gap")
    assert judge(event(case_sequence=3, owner_epoch=2), known).reason.startswith("stale owner")
    assert judge(event(case_sequence=2), NOTHING).reason.startswith("sequence gap")  # #1 never arrived
    again = domain.CaseKnowledge(event_id_at_sequence="e1", last_sequence=2, known_epoch=1, already_stored=True)
    assert judge(event(case_sequence=2), again).verdict is domain.Verdict.DUPLICATE
    other = domain.CaseKnowledge(event_id_at_sequence="e0", last_sequence=2, known_epoch=1, already_stored=False)
    assert judge(event(case_sequence=2), other).reason.startswith("conflict")
    behind = domain.CaseKnowledge(event_id_at_sequence=None, last_sequence=2, known_epoch=1, already_stored=False)
    assert judge(event(case_sequence=1), behind).reason.startswith("out of order")


def judge_all(*events: domain.InboundEvent, ledgers: dict[str, domain.CaseLedger] | None = None) -> list[str]:
    decisions = domain.judge_batch(
        events, child="511102", receiver="511100", regions=REGIONS, ledgers=ledgers or {}, stored_ids=set()
    )
    return [d.verdict.value if d.verdict is not domain.Verdict.REFUSE else d.reason.split(":")[0] for d in decisions]


def test_envelope_versions_are_not_the_links_order() -> None:
    visit = event(event_id="v", version=0, case_sequence=2, event_type="visit_booked")  # a fact: version 0
    intake = event(event_id="a", version=3, case_sequence=3, event_type="case_evaluated")
    routing = event(event_id="b", version=3, case_sequence=4, event_type="work_order_changed")  # same version
    assert judge_all(event(), visit, intake, routing) == ["apply"] * 4


def test_a_batch_is_judged_as_if_each_applied_item_were_already_stored() -> None:
    ledgers = {"511102-20261122-000001": domain.CaseLedger(last_sequence=1, known_epoch=2)}
    assert judge_all(
        event(event_id="x", case_sequence=2, owner_epoch=2),
        event(event_id="x", case_sequence=2, owner_epoch=2),  # the same item twice in one batch
        event(event_id="y", case_sequence=2, owner_epoch=2),  # another event at a taken sequence
        event(event_id="z", case_sequence=4, owner_epoch=2),
        event(event_id="w", case_sequence=3, owner_epoch=1),
        ledgers=ledgers,
    ) == ["apply", "duplicate", "conflict", "sequence gap", "stale owner"]
    assert ledgers["511102-20261122-000001"].last_sequence == 2


def test_the_up_log_numbers_each_case_on_its_own() -> None:
    last = {"c1": 4}
    assert domain.number_case_events(["c1", "c2", "c1", "c2", "c3"], last) == [5, 1, 6, 2, 1]
    assert last == {"c1": 6, "c2": 2, "c3": 1}


def test_down_items_go_here_or_to_the_next_hop() -> None:
    assert domain.route_down("510000", here="510000", regions=REGIONS) == domain.DownRoute(local=True)
    assert domain.route_down("511102", here="510000", regions=REGIONS) == domain.DownRoute(False, "511100")
    assert domain.route_down("510104", here="511100", regions=REGIONS) is None


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    rng = random.Random(1)
    delays = [domain.backoff_delay(n, base_s=0.2, cap_s=10.0, rng=rng) for n in range(1, 12)]
    assert domain.backoff_delay(0) == 0.0
    assert 0.2 <= delays[0] <= 0.4
    assert all(d <= 10.0 for d in delays) and delays[-1] >= 5.0


def test_package_round_trip_and_tampering() -> None:
    data = seal(
        origin_node="511102", since=3, created_at="2026-11-22T00:00:00+00:00", items=[(4, b"\x01\x02", 1)], key=b"k"
    )
    package = open_package(data, key=b"k")
    assert (package.origin_node, package.since, package.until, package.items) == ("511102", 3, 4, [(4, b"\x01\x02", 1)])
    with pytest.raises(PackageRefused, match="signature mismatch"):
        open_package(data.replace(b"511102", b"511111"), key=b"k")
    with pytest.raises(PackageRefused, match="signature mismatch"):
        open_package(data, key=b"other")
    with pytest.raises(PackageRefused, match="unreadable"):
        open_package(b"\x00garbage", key=b"k")


def test_a_batch_from_a_node_that_is_not_a_direct_child_is_refused_whole() -> None:
    decisions = domain.judge_batch(
        [event(), event(event_id="e2", case_sequence=2)],
        child="510104",
        receiver="511100",
        regions=REGIONS,
        ledgers={},
        stored_ids=set(),
    )
    assert [d.reason.split(":")[0] for d in decisions] == ["unknown node", "unknown node"]


def test_commands_are_delivered_here_go_down_or_climb() -> None:
    def route(target: str, here: str, *, from_parent: bool = False) -> tuple[str, str]:
        found = domain.route_command(target, here=here, regions=REGIONS, came_from_parent=from_parent)
        return found.action.value, found.next_child or found.reason.split(":")[0]

    assert route("511100", "511100") == ("deliver", "")
    assert route("511102", "510000") == ("down", "511100")
    assert route("510000", "511102") == ("up", "")  # two tiers above: it climbs hop by hop
    assert route("511111", "511102") == ("up", "")  # a sibling: up to the common ancestor, then down
    assert route("511111", "511100", from_parent=True) == ("down", "511111")
    # Truly not routable: an unknown node; a parent sending what is not below (no bouncing back up).
    assert route("999999", "511102") == ("refuse", "unknown node")
    assert route("", "511102") == ("refuse", "unknown node")
    assert route("510104", "511100", from_parent=True) == ("refuse", "out of subtree")


def test_a_command_follows_a_newer_owner_and_never_an_older_one() -> None:
    assert domain.chase_owner("511102", 1, known_epoch=2, known_owner="511100") == ("511100", 2)
    assert domain.chase_owner("511102", 2, known_epoch=2, known_owner="511100") is None  # nothing newer here
    assert domain.chase_owner("511102", 3, known_epoch=2, known_owner="511100") is None  # the issuer knew more
    assert domain.chase_owner("511102", 0, known_epoch=None, known_owner="") is None
    assert domain.chase_owner("511100", 1, known_epoch=2, known_owner="511100") is None  # already addressed there


def test_a_hand_off_replica_is_sent_down_only_toward_another_subtree() -> None:
    assert domain.hand_off_route("511111", here="511100", child="511102", regions=REGIONS) == "511111"
    assert domain.hand_off_route("511102", here="511100", child="511102", regions=REGIONS) is None  # the child did
    assert domain.hand_off_route("511100", here="511100", child="511102", regions=REGIONS) is None  # routing here
    assert domain.hand_off_route("510000", here="511100", child="511102", regions=REGIONS) is None  # climbs instead


def test_a_package_marks_its_commands_and_reads_as_before_without() -> None:
    data = seal(
        origin_node="511102",
        since=0,
        created_at="2026-11-22T00:00:00+00:00",
        items=[(1, b"\x01", 1), (2, b"\x02", 0)],
        kinds={2: "command"},
        key=b"k",
    )
    package = open_package(data, key=b"k")
    assert package.kinds == {2: "command"} and [p for p, _, _ in package.items] == [1, 2]
    plain = seal(origin_node="511102", since=0, created_at="x", items=[(1, b"\x01", 1)], key=b"k")
    assert b'"kind"' not in plain and open_package(plain, key=b"k").kinds == {}


def test_a_cut_link_reconnects_within_its_own_backoff() -> None:
    """gRPC's reconnect backoff (120 s by default) must not outlast the link's own retry cap."""
    from services.common.grpcclient import CHANNEL_OPTIONS
    from services.exchange.link import Backoff

    options = dict(CHANNEL_OPTIONS)
    assert options["grpc.max_reconnect_backoff_ms"] <= Backoff().cap_s * 1000
    assert options["grpc.initial_reconnect_backoff_ms"] <= options["grpc.max_reconnect_backoff_ms"]


# ----------------------------------------------- link mechanics (store, link and simulator share them)


def test_a_batch_stops_before_the_item_that_would_pass_the_byte_limit_but_carries_at_least_one() -> None:
    assert domain.batch_length([400, 400, 400], max_bytes=1000) == 2
    assert domain.batch_length([5000, 10], max_bytes=1000) == 1
    assert domain.batch_length([10, 10], max_bytes=1000) == 2
    assert domain.batch_length([], max_bytes=1000) == 0


def test_resent_positions_are_not_judged_again_and_are_acknowledged_again() -> None:
    assert domain.fresh_positions([3, 4, 5], stored=0) == ([0, 1, 2], 5)
    assert domain.fresh_positions([3, 4, 5, 6], stored=4) == ([2, 3], 6)  # 3 and 4 came before: a lost ack
    assert domain.fresh_positions([3, 4], stored=9) == ([], 9)
    assert domain.fresh_positions([5, 5, 4, 7], stored=0) == ([0, 3], 7)


def test_a_cursor_never_moves_back() -> None:
    assert domain.advance_cursor(7, 3) == 7
    assert domain.advance_cursor(7, None) == 7
    assert domain.advance_cursor(7, 9) == 9


def test_the_national_cursor_stops_before_the_first_report_not_acknowledged() -> None:
    reports = [(11, "a"), (12, None), (13, "b"), (14, "c")]
    assert domain.acked_prefix(reports, {"a", "b", "c"}, 10) == 14
    assert domain.acked_prefix(reports, {"a", "c"}, 10) == 12
    assert domain.acked_prefix(reports, set(), 10) == 10


def test_an_escalation_raises_the_known_epoch_to_the_new_owner_and_nothing_goes_down() -> None:
    applied = [
        (event(owner_epoch=1), ""),
        (event(event_id="e2", event_type="case_handed_off", new_owner_epoch=2, case_sequence=2), "511100"),
    ]
    assert domain.epochs_to_note(applied, {}) == {"511102-20261122-000001": (2, "511100")}
    assert domain.epochs_to_note(applied, {"511102-20261122-000001": 2}) == {}
    assert domain.epochs_to_note([(event(owner_epoch=3), "")], {"511102-20261122-000001": 1}) == {
        "511102-20261122-000001": (3, "511102")
    }


def test_a_link_is_unreachable_when_failing_or_silent_and_lagging_with_a_backlog() -> None:
    state = domain.link_state
    assert state(failing=False, silent_for_s=5.0, lag_events=10) is domain.LinkState.HEALTHY
    assert state(failing=False, silent_for_s=5.0, lag_events=domain.LAGGING_EVENTS + 1) is domain.LinkState.LAGGING
    assert state(failing=True, silent_for_s=5.0, lag_events=0) is domain.LinkState.UNREACHABLE
    assert state(failing=False, silent_for_s=None, lag_events=0) is domain.LinkState.UNREACHABLE  # never in contact
    silent = domain.UNREACHABLE_AFTER_S + 1
    assert state(failing=False, silent_for_s=silent, lag_events=0) is domain.LinkState.UNREACHABLE
