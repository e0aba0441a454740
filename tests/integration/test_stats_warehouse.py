"""The warehouse against hand-computed figures, on SQLite and PostgreSQL, through the real gRPC server.

The fixture: six cases submitted in October 2026 in 乐山市 (511100), four in 市中区 (511102) and
two in 沙湾区 (511111), plus one on 30 September. Every expected figure below is worked out by
hand in the comments (working days from the 2026 official calendar: 1-7 Oct holiday).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from lianxin.common.v1 import common_pb2
from lianxin.events.v1 import events_pb2
from lianxin.stats.v1 import stats_service_pb2 as stats_pb2
from prometheus_client import REGISTRY
from sqlalchemy import text

from bench.stats import synthetic as syn
from services.common.bus import InProcessBus
from services.common.events import folded
from services.common.regions import RegionTree
from services.common.timeutil import to_timestamp
from services.stats.store import SqlWarehouse
from services.stats.upkeep import refresh_gauges
from tests.support.warehouse import U1, U2, A, B, C, D, G, Warehouse, cn, due, fixture_events


@pytest.fixture()
def warehouse(database_url: str, tmp_path: Path) -> Iterator[Warehouse]:
    w = Warehouse(database_url, tmp_path)
    for env in fixture_events():
        w.deliver(env)
    yield w
    w.close()


def test_every_metric_matches_the_hand_computed_figures(warehouse: Warehouse) -> None:
    m = warehouse.metrics(region_code="511100", month="2026-10")
    # A, B, C, D, E, G were submitted in October (F on 30 September).
    assert (m["received"].numerator, m["received"].value) == (6, 6.0)
    assert (m["online_share"].numerator, m["online_share"].denominator) == (4, 6)  # A web, C app, E wechat, G web
    assert (m["repeat_rate"].numerator, m["repeat_rate"].denominator) == (1, 6)  # B
    # Acceptance due: A, B, C, D (E was withdrawn first, F and G have no work order); on time A, C, D.
    assert (m["on_time_acceptance_rate"].numerator, m["on_time_acceptance_rate"].denominator) == (3, 4)
    # Due for reply on 31 Dec: A, B, C (replied) and D (settle 13 Nov passed); replied A, B, C.
    assert (m["reply_rate"].numerator, m["reply_rate"].denominator) == (3, 4)
    assert m["reply_rate"].value == pytest.approx(0.75)
    # Due for completion: A, B, C, D; closed A (20 Oct) and B (4 Nov, after 30 Oct).
    assert (m["completion_rate"].numerator, m["completion_rate"].denominator) == (2, 4)
    assert (m["on_time_completion_rate"].numerator, m["on_time_completion_rate"].denominator) == (1, 4)
    # Working days to the first reply: A 12→16 Oct = 4; B 12 Oct→3 Nov = 4+5+5+2 = 16; C 13→20 Oct = 5.
    assert m["avg_reply_workdays"].value == pytest.approx((4 + 16 + 5) / 3)
    assert m["p90_reply_workdays"].value == 16.0
    # Satisfaction: A satisfied, C unsatisfied, B unrated 20 working days after 3 Nov → satisfied.
    assert (m["satisfaction_rate"].numerator, m["satisfaction_rate"].denominator) == (2, 3)
    # Overdue: B replied after its deadline, D never replied.
    assert m["overdue"].numerator == 2
    assert m["supervised"].numerator == 1  # B; D was only chased
    for metric in m.values():
        assert metric.definition
        assert metric.definition_zh.startswith(metric.definition.split(":", 1)[0] + "：")


def test_unrated_reply_is_not_counted_before_the_window_closes(warehouse: Warehouse) -> None:
    # On 10 Nov B's 20 working days have not passed, so only the two ratings count; D's deadline
    # (13 Nov) has not passed either, so only A, B and C are due for reply.
    warehouse.clock.now = cn(11, 10)
    m = warehouse.metrics(region_code="511100", month="2026-10")
    assert (m["satisfaction_rate"].numerator, m["satisfaction_rate"].denominator) == (1, 2)
    assert (m["reply_rate"].numerator, m["reply_rate"].denominator) == (3, 3)
    assert m["overdue"].numerator == 1  # B only


def test_drill_down_lists_the_cases_behind_each_figure(warehouse: Warehouse) -> None:
    m = warehouse.metrics(region_code="511100", month="2026-10", include_case_ids=True)
    assert list(m["reply_rate"].case_ids) == [A, B, C]
    assert list(m["overdue"].case_ids) == [B, D]
    assert list(m["satisfaction_rate"].case_ids) == [A, B]
    assert list(m["supervised"].case_ids) == [B]
    assert len(m["received"].case_ids) == m["received"].numerator


def test_slices_by_county_unit_category_channel_and_free_period(warehouse: Warehouse) -> None:
    assert warehouse.metrics(region_code="511102", month="2026-10")["received"].numerator == 4  # A, B, C, G
    assert warehouse.metrics(region_code="511111", month="2026-10")["received"].numerator == 2
    assert warehouse.metrics(region_code="511100", month="2026-10", unit_id=U1)["received"].numerator == 2
    assert warehouse.metrics(region_code="511100", month="2026-10", category="环境保护")["received"].numerator == 1
    by_channel = warehouse.metrics(region_code="511100", month="2026-10", channel=common_pb2.CHANNEL_HOTLINE)
    assert by_channel["received"].numerator == 1  # B (F is September)
    free = warehouse.metrics(
        region_code="511100",
        period_start=to_timestamp(cn(9, 30, 0)),
        period_end=to_timestamp(cn(10, 13, 0)),
        metrics=["received"],
    )
    assert free["received"].numerator == 3  # F, A, B


def test_statistical_month_from_the_21st(database_url: str, tmp_path: Path) -> None:
    w = Warehouse(database_url, tmp_path, start_day=21)
    try:
        for env in fixture_events():
            w.deliver(env)
        # "2026-10" is 21 Sep .. 20 Oct: F, A, B, C, D, E; G (25 Oct) belongs to "2026-11".
        assert w.metrics(region_code="511100", month="2026-10", metrics=["received"])["received"].numerator == 6
        nov = w.metrics(region_code="511100", month="2026-11", metrics=["received"], include_case_ids=True)
        assert list(nov["received"].case_ids) == [G]
        reply = w.stub.GetMetrics(stats_pb2.GetMetricsRequest(region_code="511100", month="2026-11"), timeout=5)
        assert reply.period_start.ToDatetime(tzinfo=UTC) == cn(10, 21, 0)
    finally:
        w.close()


def test_duplicates_and_out_of_order_replicas_change_nothing(database_url: str, tmp_path: Path) -> None:
    w = Warehouse(database_url, tmp_path)
    try:
        events = fixture_events()
        shuffled = events * 2
        random.Random(7).shuffle(shuffled)
        # The same events arriving replicated from the child node (via exchange), twice, shuffled.
        for env in shuffled:
            w.deliver(env, source="exchange")
        replayed = w.metrics(region_code="511100", month="2026-10")
        for env in events:
            w.deliver(env)  # and the node's own copies on top
        again = w.metrics(region_code="511100", month="2026-10")
        assert {k: (v.numerator, v.denominator) for k, v in replayed.items()} == {
            k: (v.numerator, v.denominator) for k, v in again.items()
        }
        assert again["reply_rate"].numerator == 3 and again["overdue"].numerator == 2
        with w.parts.session_factory() as session:  # type: ignore[misc]
            fact = SqlWarehouse(session).fact(B)
            assert fact is not None and fact.state == "CLOSED" and fact.version == 6
    finally:
        w.close()


def test_region_ranking_leaves_out_small_regions(warehouse: Warehouse) -> None:
    reply = warehouse.stub.RankRegions(
        stats_pb2.RankRegionsRequest(parent_region_code="511100", metric="reply_rate", month="2026-10", min_cases=3),
        timeout=10,
    )
    rows = {r.region_code: r for r in reply.rows}
    assert rows["511102"].rank == 1 and rows["511102"].value == pytest.approx(1.0) and rows["511102"].cases == 4
    assert rows["511111"].rank == 0 and rows["511111"].cases == 2  # under the minimum
    assert rows["511102"].name == "市中区"
    assert reply.rows[0].region_code == "511102"
    units = warehouse.stub.RankUnits(
        stats_pb2.RankUnitsRequest(region_code="511100", metric="received", month="2026-10", min_cases=1), timeout=10
    )
    assert [r.unit_id for r in units.rows if r.rank][:2] == [U1, U2]


def test_bad_requests_are_refused_with_the_field(warehouse: Warehouse) -> None:
    for request, field in (
        (stats_pb2.GetMetricsRequest(region_code="510100"), "region_code"),  # 成都: outside 乐山's subtree
        (stats_pb2.GetMetricsRequest(month="2026-13"), "month"),
        (stats_pb2.GetMetricsRequest(metrics=["nonsense"]), "metrics"),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            warehouse.stub.GetMetrics(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (caught.value.details() or "").startswith(field)
    with pytest.raises(grpc.RpcError) as caught:
        warehouse.stub.RankRegions(
            stats_pb2.RankRegionsRequest(parent_region_code="511102", metric="reply_rate", month="2026-10")
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_business_gauges_by_region(warehouse: Warehouse) -> None:
    counts = refresh_gauges(warehouse.parts.session_factory, RegionTree.load(), "511100", cn(12, 31))  # type: ignore[arg-type]
    # Open: C (replied, not closed), D, F, G; overdue: D; supervised and open: none (B is closed).
    assert counts["511102"] == (3, 0, 0)
    assert counts["511111"] == (1, 1, 0)
    assert REGISTRY.get_sample_value("lianxin_work_orders_open", {"region": "511100"}) == 4
    assert REGISTRY.get_sample_value("lianxin_work_orders_overdue", {"region": "511111"}) == 1


def test_events_arrive_through_the_real_bus(database_url: str, tmp_path: Path) -> None:
    w = Warehouse(database_url, tmp_path)
    try:
        bus = InProcessBus()
        for sub in w.parts.subscriptions:
            bus.subscribe(sub)
        for env in fixture_events():
            bus.publish(syn.bus_event(env))
        assert w.metrics(region_code="511100", month="2026-10", metrics=["received"])["received"].numerator == 6
    finally:
        w.close()


def _placement(case_id: str, at: datetime) -> list[events_pb2.EventEnvelope]:
    """A petition registered and placed with a unit at once, as routing published it: created with
    the assign and 书面告知 clocks, then 受理 (the notice clock stops, the settle clock starts) and 交办
    (the objection window opens), all at the same instant; then the reply and the close."""
    created = syn.work_order_created(
        case_id, version=2, at=at, unit_id=U1, deadlines={"accept_notice": due(10, 15), "assign": due(10, 13)}
    )
    accept = syn.work_order_changed(
        case_id, version=3, at=at, action="accept", to_state="ACCEPTED", deadlines={"settle": due(11, 30)}
    )
    assign = syn.work_order_changed(
        case_id,
        version=4,
        at=at,
        action="assign",
        to_state="ASSIGNED",
        unit_id=U1,
        deadlines={"settle": due(11, 30), "objection": due(10, 19)},
    )
    return [
        syn.registered(case_id, region="511102", at=at, channel="web", category="城乡建设"),
        created,
        accept,
        assign,
        syn.work_order_changed(case_id, version=5, at=cn(10, 16), action="reply", to_state="REPLIED"),
        syn.work_order_changed(case_id, version=6, at=cn(10, 20), action="close", to_state="CLOSED"),
    ]


@pytest.mark.parametrize("source", [None, "exchange"])
def test_a_placement_folded_into_its_creation_gives_the_fact_its_three_events_gave(
    database_url: str, tmp_path: Path, source: str | None
) -> None:
    """Issue 21: one work_order_created carrying 受理 and 交办 (at the node, or replicated up) folds
    into the same case fact as the three events (accepted_at, accept_due, state, unit, deadlines),
    and the same figures; delivered twice it is kept once."""
    three_id, one_id = "511102-20261012-000101", "511102-20261012-000102"
    w = Warehouse(database_url, tmp_path)
    try:
        for env in _placement(three_id, cn(10, 12, 11)):
            w.deliver(env, source=source)
        registered, *placement, reply, close = _placement(one_id, cn(10, 12, 11))
        one = folded(placement)
        assert one.version == 4 and len(one.work_order_created.placement) == 2
        for env in (registered, one, one, reply, close):
            w.deliver(env, source=source)
        with w.parts.session_factory() as session:  # type: ignore[misc]
            warehouse = SqlWarehouse(session)
            three, once = warehouse.fact(three_id), warehouse.fact(one_id)
            assert three is not None and once is not None
            columns = [c.key for c in three.__table__.columns if c.key != "case_id"]

            def named(row: object, case_id: str) -> dict[str, object]:
                values = {c: getattr(row, c) for c in columns}
                return {c: v.replace(case_id, "<case>") if isinstance(v, str) else v for c, v in values.items()}

            assert named(once, one_id) == named(three, three_id)
            assert three.accepted_at is not None and three.accept_due is not None and three.state == "CLOSED"
            kept = session.execute(text("SELECT case_id, COUNT(*) FROM case_events GROUP BY case_id")).all()
        assert dict(kept) == {three_id: 6, one_id: 4}  # the folded body kept once
        m = w.metrics(region_code="511100", month="2026-10", include_case_ids=True)
        assert list(m["on_time_acceptance_rate"].case_ids) == [three_id, one_id]
        assert (m["on_time_acceptance_rate"].numerator, m["on_time_acceptance_rate"].denominator) == (2, 2)
    finally:
        w.close()
