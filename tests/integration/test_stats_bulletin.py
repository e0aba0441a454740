"""The monthly bulletin: ``lianxin report`` writes Markdown, CSV and PNG files a person can read."""

from __future__ import annotations

import csv
from datetime import datetime, timedelta
from pathlib import Path

from lianxin.stats.v1 import stats_service_pb2 as stats_pb2

from bench.stats import synthetic as syn
from bench.stats.generate import bulk_insert, generate
from services.cli import main
from services.common.regions import RegionTree
from services.common.timeutil import CHINA
from services.stats.domain import StatsConfig
from tests.support.warehouse import Warehouse, fixture_events

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def populate(w: Warehouse) -> None:
    tree = RegionTree.load()
    bulk_insert(
        w.engine,
        generate(
            4000, tree=tree, root="511100", months=["2026-08", "2026-09", "2026-10"], config=StatsConfig(), seed=3
        ),
    )
    for env in fixture_events():
        w.deliver(env)
    end = datetime(2026, 11, 1, tzinfo=CHINA)
    for i in range(20):  # a burst of complaints about one factory on the last day of the month
        at = end - timedelta(hours=1 + i)
        w.deliver(
            syn.registered(
                f"511112-20261031-{i:06d}",
                region="511112",
                at=at,
                category="环境保护",
                title="化工厂夜间排放刺鼻废气",
                body="五通桥区某化工厂夜间排放刺鼻废气，居民无法开窗，请环保部门查处。",
            )
        )


def test_report_command_writes_markdown_csv_and_charts(tmp_path: Path) -> None:
    w = Warehouse("sqlite://", tmp_path)  # the node's own file under tmp_path/511100/
    url = f"sqlite:///{tmp_path / '511100' / 'stats.db'}"
    try:
        populate(w)
    finally:
        w.close()
    out = tmp_path / "bulletin"
    code = main(
        [
            "report",
            "--region",
            "511100",
            "--month",
            "2026-10",
            "--out",
            str(out),
            "--database-url",
            url,
            "--node",
            "511100",
        ]
    )
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    for expected in (
        "bulletin.md",
        "summary.csv",
        "volume_by_category.csv",
        "volume_by_channel.csv",
        "rates_by_region.csv",
        "ranking_regions.csv",
        "ranking_units.csv",
        "hotspots.csv",
        "third_party_by_unit.csv",
        "assist_late_by_unit.csv",
        "progress_notices_by_unit.csv",
        "volume_by_category.png",
        "volume_by_channel.png",
        "rates_by_region.png",
    ):
        assert expected in names
    for png in out.glob("*.png"):
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, png.name
    markdown = (out / "bulletin.md").read_text("utf-8")
    assert "四川省乐山市 2026-10" in markdown
    assert "![按诉求分类](volume_by_category.png)" in markdown
    assert "五通桥区" in markdown and "环境保护" in markdown  # the hotspot section names the burst
    with (out / "ranking_regions.csv").open(encoding="utf-8-sig") as fh:
        ranking = list(csv.DictReader(fh))
    ranked = [r for r in ranking if r["rank"]]
    assert len(ranking) == len(RegionTree.load().children["511100"])
    assert all(int(r["cases"]) >= 10 for r in ranked)
    assert all(int(r["cases"]) < 10 for r in ranking if not r["rank"])
    with (out / "summary.csv").open(encoding="utf-8-sig") as fh:
        summary = {r["metric"]: r for r in csv.DictReader(fh)}
    assert int(summary["received"]["numerator"]) > 1000
    # 第三方评价 beside the citizen's rate: the sampled and rated cases of the generated month, per unit too.
    rate = summary["third_party_satisfaction_rate"]
    assert int(summary["third_party_sampled"]["numerator"]) > int(rate["denominator"]) > int(rate["numerator"]) > 0
    with (out / "third_party_by_unit.csv").open(encoding="utf-8-sig") as fh:
        units = list(csv.DictReader(fh))
    assert units and sum(int(u["rated"]) for u in units) == int(rate["denominator"])
    with (out / "rates_by_region.csv").open(encoding="utf-8-sig") as fh:
        regions = list(csv.DictReader(fh))
    assert any(float(r["third_party_satisfaction_rate"]) > 0 for r in regions)  # per region too
    assert "## 六、第三方评价（抽样）" in markdown and "第三方评价满意率" in markdown
    # 协办超期 per assisting unit: each late case counted once per unit, no more than the summary's count.
    with (out / "assist_late_by_unit.csv").open(encoding="utf-8-sig") as fh:
        late = {r["unit_id"]: int(r["assist_late"]) for r in csv.DictReader(fh)}
    assert late and max(late.values()) <= int(summary["assist_late"]["numerator"]) <= sum(late.values())
    assert "| 协办单位 | 协办超期件 |" in markdown and f"| {min(late, key=lambda u: (-late[u], u))} |" in markdown


def test_get_bulletin_rpc_returns_the_files(tmp_path: Path) -> None:
    w = Warehouse(f"sqlite:///{tmp_path / 'stats.db'}", tmp_path)
    try:
        populate(w)
        reply = w.stub.GetBulletin(stats_pb2.GetBulletinRequest(region_code="511102", month="2026-10"), timeout=60)
    finally:
        w.close()
    assert reply.markdown.startswith("# 四川省乐山市市中区 2026-10")
    types = {f.name: f.content_type for f in reply.files}
    assert types["volume_by_category.png"] == "image/png"
    assert types["summary.csv"] == "text/csv"
    assert "rates_by_region.png" not in types  # a county has no child regions to compare
