"""The warehouse's use cases over an in-memory unit of work: the figures a supervisor reads, without a database.

The fixture is tests/support/warehouse.py's (six October cases in 乐山市, figures worked out by hand);
tests/integration/test_stats_warehouse.py checks the same figures through gRPC on SQLite and
PostgreSQL. These are the fast layer of the pyramid.
"""

from __future__ import annotations

import random
from datetime import datetime

import pytest
from lianxin.events.v1 import events_pb2

from bench.stats import synthetic as syn
from services.common.calendar import ChineseWorkingCalendar
from services.common.errors import InvalidArgument
from services.common.regions import RegionTree
from services.stats import handlers
from services.stats.bulletin import gather
from services.stats.bulletin_markdown import render_markdown
from services.stats.domain import MetricValue, StatsConfig
from services.stats.hotspot import HotspotRules
from services.stats.translate import case_text, to_case_event
from tests.support.stats import FakeStatsUnitOfWork
from tests.support.warehouse import A, B, C, D, cn, fixture_events

TREE = RegionTree.load()
NODE = "511100"  # 乐山市
CONFIG = StatsConfig()
CALENDAR = ChineseWorkingCalendar()


def ingest(uow: FakeStatsUnitOfWork, env: events_pb2.EventEnvelope, source: str = "intake") -> bool:
    event = to_case_event(env)
    assert event is not None
    return handlers.ingest(
        uow,
        (event,),
        source=source,
        body=env.SerializeToString(),
        text=case_text(env),
        tree=TREE,
        config=CONFIG,
        calendar=CALENDAR,
    )


def loaded(events: list[events_pb2.EventEnvelope] | None = None) -> FakeStatsUnitOfWork:
    uow = FakeStatsUnitOfWork()
    for env in fixture_events() if events is None else events:
        ingest(uow, env)
    return uow


def metrics(
    uow: FakeStatsUnitOfWork, *, as_of: datetime | None = None, with_ids: bool = False, **slice_args: object
) -> dict[str, MetricValue]:
    where = handlers.make_slice(TREE, NODE, **{"region_code": NODE, "months": ("2026-10",), **slice_args})  # type: ignore[arg-type]
    values = handlers.get_metrics(uow, where, names=[], as_of=as_of or cn(12, 31), with_ids=with_ids)
    return {v.name: v for v in values}


def test_the_months_figures_match_the_hand_computed_ones() -> None:
    m = metrics(loaded())
    assert m["received"].numerator == 6
    assert (m["reply_rate"].numerator, m["reply_rate"].denominator) == (3, 4)
    assert (m["on_time_completion_rate"].numerator, m["on_time_completion_rate"].denominator) == (1, 4)
    assert m["avg_reply_workdays"].value == pytest.approx((4 + 16 + 5) / 3)
    assert m["p90_reply_workdays"].value == 16.0
    assert (m["satisfaction_rate"].numerator, m["satisfaction_rate"].denominator) == (2, 3)
    assert (m["overdue"].numerator, m["supervised"].numerator) == (2, 1)
    assert all(v.definition for v in m.values())


def test_figures_settle_as_deadlines_pass() -> None:
    # On 10 Nov B's rating window is open and D's deadline (13 Nov) has not passed.
    m = metrics(loaded(), as_of=cn(11, 10))
    assert (m["satisfaction_rate"].numerator, m["satisfaction_rate"].denominator) == (1, 2)
    assert (m["reply_rate"].numerator, m["reply_rate"].denominator) == (3, 3)
    assert m["overdue"].numerator == 1


def test_duplicates_and_events_out_of_order_change_nothing() -> None:
    events = fixture_events()
    shuffled = events * 2
    random.Random(3).shuffle(shuffled)
    uow = FakeStatsUnitOfWork()
    kept = [ingest(uow, env) for env in shuffled]
    assert kept.count(True) == len(events)  # each event kept once, its copy refused
    expected = metrics(loaded())
    assert {k: (v.numerator, v.denominator) for k, v in metrics(uow).items()} == {
        k: (v.numerator, v.denominator) for k, v in expected.items()
    }


def test_a_replica_from_the_subtree_counts_like_the_nodes_own_event() -> None:
    uow = FakeStatsUnitOfWork()
    for env in fixture_events():
        ingest(uow, env, source="exchange")
    assert metrics(uow)["received"].numerator == 6


def test_the_drill_down_lists_the_cases_behind_a_figure() -> None:
    m = metrics(loaded(), with_ids=True)
    assert m["reply_rate"].case_ids == [A, B, C]
    assert m["overdue"].case_ids == [B, D]
    assert m["supervised"].case_ids == [B]


def test_slices_by_county_and_unit() -> None:
    uow = loaded()
    assert metrics(uow, region_code="511102")["received"].numerator == 4
    assert metrics(uow, region_code="511111")["received"].numerator == 2
    assert metrics(uow, unit_id="511102:城乡建设")["received"].numerator == 2


def test_bad_requests_name_the_field() -> None:
    uow = loaded()
    with pytest.raises(InvalidArgument) as outside:
        handlers.make_slice(TREE, NODE, region_code="510100")  # 成都市 is not in 乐山市's subtree
    assert outside.value.field == "region_code"
    where = handlers.make_slice(TREE, NODE, region_code=NODE)
    with pytest.raises(InvalidArgument) as unknown:
        handlers.get_metrics(uow, where, names=["happiness"], as_of=cn(12, 31), with_ids=False)
    assert unknown.value.field == "metrics"
    with pytest.raises(InvalidArgument) as county:
        handlers.rank_regions(
            uow, TREE, NODE, parent_region_code="511102", metric="reply_rate", month="2026-10", year="",
            min_cases=1, as_of=cn(12, 31),
        )  # fmt: skip
    assert county.value.field == "parent_region_code"
    with pytest.raises(InvalidArgument) as month:
        handlers.rank_units(
            uow, TREE, NODE, region_code=NODE, metric="reply_rate", month="2026-13", year="", min_cases=1,
            as_of=cn(12, 31),
        )  # fmt: skip
    assert month.value.field == "month"


def test_every_child_region_is_listed_and_only_those_with_enough_cases_are_ranked() -> None:
    rows = handlers.rank_regions(
        loaded(), TREE, NODE, parent_region_code=NODE, metric="received", month="2026-10", year="",
        min_cases=2, as_of=cn(12, 31),
    )  # fmt: skip
    assert {r.key for r in rows} == set(TREE.children[NODE])
    ranked = [(r.rank, r.key, r.cases) for r in rows if r.rank]
    assert ranked == [(1, "511102", 4), (2, "511111", 2)]


def test_the_bulletin_reads_the_same_figures() -> None:
    figures = gather(
        loaded(), TREE, NODE, region_code=NODE, month="2026-10", config=CONFIG, as_of=cn(12, 31),
        rules=HotspotRules(), min_cases=1,
    )  # fmt: skip
    summary = {name: now for name, now, _ in figures.summary}
    assert summary["received"].numerator == 6 and summary["reply_rate"].value == pytest.approx(0.75)
    assert [code for code, agg in figures.child_rows if agg.received] == ["511102", "511111"]
    text = render_markdown(figures, TREE, "Noto Sans CJK SC", ["summary.csv"])
    assert "| 受理量 (received) | 6 | 6/1 | 1 |"  # F in September in text
    assert "| 回复率 (reply_rate) | 75.0% | 3/4 | 0.0% |" in text
    assert text.rstrip().endswith("数据文件：summary.csv。")


def test_progress_notices_are_counted_per_notice_and_the_latest_choice_per_case() -> None:
    """办事进度推送: each notice once (a replica of the same notice is not a second), given-up ones
    apart, and a citizen who turned notices off and on again is not counted as opted out."""
    notices = [
        syn.notice_settled(A, version=3, at=cn(10, 13), kind="accepted"),
        syn.notice_settled(A, version=4, at=cn(10, 16), kind="replied"),
        syn.notice_settled(B, version=3, at=cn(10, 16), kind="accepted", outcome="given_up"),
        syn.notices_set(C, version=2, at=cn(10, 14), enabled=False),
        syn.notices_set(D, version=2, at=cn(10, 15), enabled=False),
        syn.notices_set(D, version=3, at=cn(10, 16), enabled=True),
    ]
    uow = loaded([*fixture_events(), *notices])
    assert not ingest(uow, notices[0], source="exchange")  # the same notice replicated: kept once
    m = metrics(uow, with_ids=True)
    assert (m["notices_sent"].numerator, m["notices_failed"].numerator, m["notices_opted_out"].numerator) == (2, 1, 1)
    assert m["notices_sent"].case_ids == [A] and m["notices_opted_out"].case_ids == [C]
    assert metrics(uow, region_code="511111")["notices_opted_out"].numerator == 0  # D turned them on again

    figures = gather(
        uow, TREE, NODE, region_code=NODE, month="2026-10", config=CONFIG, as_of=cn(12, 31),
        rules=HotspotRules(), min_cases=1,
    )  # fmt: skip
    assert [(unit, a.notices_sent, a.notices_failed) for unit, a in figures.notice_units] == [
        ("511102:城乡建设", 2, 1),
        ("511102:环境保护", 0, 0),
    ]
    text = render_markdown(figures, TREE, "Noto Sans CJK SC", [])
    assert "本月受理件向群众发送进度通知 2 条，重试后仍未发出 1 条；1 件的群众关闭了进度通知。" in text
    assert "| 市中区 (511102) | 2 | 1 | 1 |" in text
