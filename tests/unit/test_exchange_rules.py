"""Exchange rules without servers: what a parent accepts from a child, where down items go, backoff, packages."""

from __future__ import annotations

import random

import pytest

from services.common.regions import RegionTree
from services.exchange import domain
from services.exchange.package import PackageRefused, open_package, seal

REGIONS = RegionTree.load()
NOTHING = domain.CaseKnowledge(event_id_at_version=None, last_version=None, known_epoch=None, already_stored=False)


def event(**changes: object) -> domain.InboundEvent:
    fields: dict[str, object] = dict(
        event_id="e1", case_id="511102-20261122-000001", version=1, owner_epoch=1,
        owner_node="511102", origin_node="511102", event_type="case_registered",
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
    ],
)
def test_bad_identity_is_refused_with_reason(ev: domain.InboundEvent, child: str, reason: str) -> None:
    decision = judge(ev, child=child)
    assert decision.verdict is domain.Verdict.REFUSE and decision.reason.startswith(reason)


def test_per_case_order_and_epochs() -> None:
    known = domain.CaseKnowledge(event_id_at_version=None, last_version=2, known_epoch=3, already_stored=False)
    assert judge(event(version=3, owner_epoch=3), known).verdict is domain.Verdict.APPLY
    assert judge(event(version=4, owner_epoch=3), known).reason.startswith("version gap")
    assert judge(event(version=3, owner_epoch=2), known).reason.startswith("stale owner")
    again = domain.CaseKnowledge(event_id_at_version="e1", last_version=2, known_epoch=1, already_stored=True)
    assert judge(event(version=2), again).verdict is domain.Verdict.DUPLICATE
    other = domain.CaseKnowledge(event_id_at_version="e0", last_version=2, known_epoch=1, already_stored=False)
    assert judge(event(version=2), other).reason.startswith("conflict")


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
        origin_node="511102", since=3, created_at="2026-11-22T00:00:00+00:00", items=[(4, b"\x01\x02")], key=b"k"
    )
    package = open_package(data, key=b"k")
    assert (package.origin_node, package.since, package.until, package.items) == ("511102", 3, 4, [(4, b"\x01\x02")])
    with pytest.raises(PackageRefused, match="signature mismatch"):
        open_package(data.replace(b"511102", b"511111"), key=b"k")
    with pytest.raises(PackageRefused, match="signature mismatch"):
        open_package(data, key=b"other")
    with pytest.raises(PackageRefused, match="unreadable"):
        open_package(b"\x00garbage", key=b"k")
