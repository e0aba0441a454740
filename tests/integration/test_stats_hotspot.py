"""Hotspot warning on real citizen messages: a replay of messages.csv flags an injected burst, and only it."""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration
from lianxin.events.v1 import events_pb2
from lianxin.stats.v1 import stats_service_pb2 as stats_pb2

from bench.stats import synthetic as syn
from services.common.timeutil import CHINA, to_timestamp
from services.stats.hotspot import CaseSighting, HotspotRules, detect
from tests.support.warehouse import Warehouse

AS_OF = datetime(2026, 11, 20, 12, tzinfo=CHINA)
COUNTIES = ("511102", "511111", "511112", "511113")
BURST_REGION, BURST_CATEGORY, BURST_SIZE = "511102", "环境保护", 25


def replay(messages_csv: Path, *, burst: bool) -> list[events_pb2.EventEnvelope]:
    """Labelled messages as cases spread over the 29 days before AS_OF, in four counties of 乐山."""
    with messages_csv.open(encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["category"]]
    rng = random.Random(2026)
    span = timedelta(days=29).total_seconds()
    events = []
    for i, row in enumerate(rows):
        at = AS_OF - timedelta(seconds=rng.uniform(1, span))
        # Registered at the county of the matter: a warehouse counts a case where it was received
        # (docs/stats.md "Where a case counts"), so the case id names that county's node.
        region = rng.choice(COUNTIES)
        case_id = f"{region}-{at:%Y%m%d}-{i:06d}"
        events.append(
            syn.registered(
                case_id,
                region=region,
                at=at,
                category=row["category"],
                title=row["title"],
                body=row["body"],
            )
        )
    if burst:
        same = [r for r in rows if r["category"] == BURST_CATEGORY]
        for j in range(BURST_SIZE):
            row = rng.choice(same)
            at = AS_OF - timedelta(seconds=rng.uniform(60, 20 * 3600))
            events.append(
                syn.registered(
                    f"511102-{at:%Y%m%d}-9{j:05d}",
                    region=BURST_REGION,
                    at=at,
                    category=BURST_CATEGORY,
                    title="化工厂夜间偷排废气 " + row["title"],
                    body="附近化工厂夜间偷排废气，刺鼻气味严重。" + row["body"],
                )
            )
    return events


@pytest.fixture()
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'stats.db'}"


def _hotspots(w: Warehouse) -> list[stats_pb2.Hotspot]:
    request = stats_pb2.ListHotspotsRequest(
        region_code="511100", as_of=to_timestamp(AS_OF), window=Duration(seconds=86400)
    )
    # A generous deadline: the first call loads jieba's dictionary, slow on a busy machine.
    return list(w.stub.ListHotspots(request, timeout=180).hotspots)


@pytest.fixture()
def make_warehouse(sqlite_url: str, tmp_path: Path) -> Iterator[list[Warehouse]]:
    made: list[Warehouse] = []
    yield made
    for w in made:
        w.close()


@pytest.mark.parametrize("burst", [False, True], ids=["plain", "burst"])
def test_replayed_messages_flag_only_the_injected_burst(
    messages_csv: Path, sqlite_url: str, tmp_path: Path, make_warehouse: list[Warehouse], burst: bool
) -> None:
    w = Warehouse(sqlite_url, tmp_path)
    make_warehouse.append(w)
    for env in replay(messages_csv, burst=burst):
        w.deliver(env)
    found = _hotspots(w)
    if not burst:
        assert found == []
        return
    assert [(h.region_code, h.category) for h in found] == [(BURST_REGION, BURST_CATEGORY)]
    spot = found[0]
    assert spot.count >= BURST_SIZE
    assert spot.baseline < 3
    assert "化工厂" in spot.keywords or "废气" in spot.keywords
    assert len(spot.example_case_ids) == 5


def test_a_quiet_cell_with_a_few_cases_is_not_a_hotspot() -> None:
    now = datetime(2026, 11, 20, tzinfo=CHINA)
    cases = [CaseSighting(f"c{i}", "511102", "教育文体", now - timedelta(hours=i + 1)) for i in range(4)]
    assert detect(cases, as_of=now, rules=HotspotRules()) == []  # 4 < min_count, whatever the baseline


TOPIC_KEY = "伊景园"  # A市伊景园滨河苑车位捆绑销售: 40 real messages of summer 2019 in messages.csv


def test_a_hotspot_names_its_topic_with_cases_growth_and_units(
    messages_csv: Path, sqlite_url: str, tmp_path: Path, make_warehouse: list[Warehouse]
) -> None:
    """Real messages about one compound's bundled parking spaces arrive at 511102 among the replayed
    background: ListHotspots flags 城乡建设 there and names the topic, its cases, growth and units."""
    w = Warehouse(sqlite_url, tmp_path)
    make_warehouse.append(w)
    for env in replay(messages_csv, burst=False):
        w.deliver(env)
    with messages_csv.open(encoding="utf-8", newline="") as fh:
        topic_rows = [r for r in csv.DictReader(fh) if TOPIC_KEY in r["title"]][:20]
    rng = random.Random(23)
    injected: list[str] = []
    for j, row in enumerate(topic_rows):
        earlier = j >= 16  # four of them the day before the window: the topic's previous count
        at = AS_OF - timedelta(seconds=rng.uniform(60, 20 * 3600)) - (timedelta(hours=24) if earlier else timedelta())
        case_id = f"511102-{at:%Y%m%d}-8{j:05d}"
        w.deliver(
            syn.registered(case_id, region="511102", at=at, category="城乡建设", title=row["title"], body=row["body"])
        )
        if not earlier:
            injected.append(case_id)
        if j < 10:  # ten of them already with a unit: the housing bureau for most, one with the market regulator
            unit = "511102-zjj" if j < 9 else "511102-scjgj"
            w.deliver(syn.work_order_created(case_id, version=2, at=at, unit_id=unit, deadlines={}))
    found = [h for h in _hotspots(w) if (h.region_code, h.category) == ("511102", "城乡建设")]
    assert found, "the burst of one topic makes its cell a hotspot"
    topics = list(found[0].topics)
    assert topics, "the hotspot names what its cases are about"
    topic = topics[0]
    assert TOPIC_KEY in topic.label or any(TOPIC_KEY in t or "车位" in t for t in topic.top_terms)
    assert len(set(topic.case_ids) & set(injected)) >= 12  # most of the sixteen, few others
    assert len(set(topic.case_ids) - set(injected)) <= 2
    assert topic.count == len(topic.case_ids)
    assert topic.previous_count >= 2 and topic.growth == topic.count - topic.previous_count
    assert list(topic.unit_ids)[:1] == ["511102-zjj"]
