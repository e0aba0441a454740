"""The monthly bulletin (月度通报): Markdown + CSV tables + PNG charts for one region and statistical month.

Reads through the same handlers as the RPCs, so every figure in the bulletin is one a person could
also query (and drill into). ``gather`` asks the unit of work for the month's figures
(``BulletinFigures``); ``bulletin_files`` writes them as CSV tables and charts, ``bulletin_markdown``
as the bulletin's text. Charts use matplotlib's Agg backend; Chinese labels need a CJK font
(Debian ``fonts-noto-cjk``), and without one the charts fall back to ASCII labels (region codes,
category numbers) that the Markdown explains.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from services.common.regions import RegionTree, Tier
from services.stats import handlers
from services.stats.bulletin_files import cjk_font, draw_charts, write_tables
from services.stats.bulletin_markdown import render_markdown
from services.stats.domain import (
    DEFINITIONS,
    Aggregates,
    MetricValue,
    RankRow,
    StatsConfig,
    compute,
    month_bounds,
    shift_month,
)
from services.stats.hotspot import Hotspot, HotspotRules
from services.stats.ports import Slice, StatsUnitOfWork

log = logging.getLogger(__name__)

SUMMARY_METRICS = list(DEFINITIONS)
RANK_METRIC = "on_time_completion_rate"
MIN_CASES = 10


@dataclass
class Bulletin:
    markdown: Path
    files: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class BulletinFigures:
    """Everything one month's bulletin shows, read once; the writers only format it."""

    region_code: str
    month: str
    start: datetime
    end: datetime
    as_of: datetime
    min_cases: int
    total: Aggregates
    # (metric, this month, the month before)
    summary: list[tuple[str, MetricValue, MetricValue]]
    # most cases first
    categories: list[tuple[str, Aggregates]]
    channels: list[tuple[str, Aggregates]]
    # the child regions in the tree's order (none for a county)
    child_rows: list[tuple[str, Aggregates]]
    ranking: list[RankRow]
    units: list[RankRow]
    # 第三方评价: units with sampled cases; 协办超期: assisting units late, most cases first
    third_party: list[tuple[str, Aggregates]]
    late_units: list[tuple[str, int]]
    spots: list[Hotspot]
    # 办事进度推送: units whose cases' citizens were sent notices, failed or opted out
    notice_units: list[tuple[str, Aggregates]]


def gather(
    uow: StatsUnitOfWork,
    tree: RegionTree,
    node: str,
    *,
    region_code: str,
    month: str,
    config: StatsConfig,
    as_of: datetime,
    rules: HotspotRules,
    min_cases: int,
) -> BulletinFigures:
    """Read the month's figures of ``region_code`` (bad region or month: INVALID_ARGUMENT)."""
    where = handlers.make_slice(tree, node, region_code=region_code, months=(month,))
    start, end = month_bounds(month, config)
    total = uow.aggregate(where, as_of=as_of, group_by=None).get("", Aggregates())
    before = Slice(where.region_code, where.tier, months=(shift_month(month, -1),))
    previous = uow.aggregate(before, as_of=as_of, group_by=None).get("", Aggregates())
    children = tree.children.get(where.region_code, []) if where.tier is not Tier.COUNTY else []
    by_child = uow.aggregate(where, as_of=as_of, group_by="child") if children else {}
    ranking = (
        handlers.rank_regions(
            uow, tree, node, parent_region_code=where.region_code, metric=RANK_METRIC, month=month, year="",
            min_cases=min_cases, as_of=as_of,
        )
        if children
        else []
    )  # fmt: skip
    units = handlers.rank_units(
        uow, tree, node, region_code=where.region_code, metric=RANK_METRIC, month=month, year="",
        min_cases=min_cases, as_of=as_of,
    )  # fmt: skip
    by_unit = uow.aggregate(where, as_of=as_of, group_by="unit")

    def most_first(groups: dict[str, Aggregates]) -> list[tuple[str, Aggregates]]:
        return sorted(groups.items(), key=lambda kv: (-kv[1].received, kv[0]))

    return BulletinFigures(
        region_code=where.region_code,
        month=month,
        start=start,
        end=end,
        as_of=as_of,
        min_cases=min_cases,
        total=total,
        summary=[(name, compute(name, total), compute(name, previous)) for name in SUMMARY_METRICS],
        categories=most_first(uow.aggregate(where, as_of=as_of, group_by="category")),
        channels=most_first(uow.aggregate(where, as_of=as_of, group_by="channel")),
        child_rows=[(code, by_child.get(code, Aggregates())) for code in children],
        ranking=ranking,
        units=units,
        third_party=sorted((k, a) for k, a in by_unit.items() if k and a.tp_sampled),
        late_units=sorted(uow.late_assisting_units(where).items(), key=lambda kv: (-kv[1], kv[0])),
        spots=handlers.hotspots(uow, tree, node, region_code=where.region_code, as_of=min(as_of, end), rules=rules),
        notice_units=sorted(
            (k, a) for k, a in by_unit.items() if k and (a.notices_sent or a.notices_failed or a.notices_off)
        ),
    )


def write_bulletin(
    uow: StatsUnitOfWork,
    tree: RegionTree,
    node: str,
    *,
    region_code: str,
    month: str,
    out_dir: Path,
    config: StatsConfig,
    as_of: datetime,
    rules: HotspotRules | None = None,
    min_cases: int = MIN_CASES,
) -> Bulletin:
    """Write bulletin.md with its CSV and PNG files into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = gather(
        uow,
        tree,
        node,
        region_code=region_code,
        month=month,
        config=config,
        as_of=as_of,
        rules=rules or HotspotRules(),
        min_cases=min_cases,
    )
    font = cjk_font()
    if font is None:
        log.warning("no CJK font found; bulletin charts use ASCII labels (install fonts-noto-cjk)")
    files = write_tables(out_dir, figures, tree)
    files += draw_charts(out_dir, figures, tree, font)
    markdown = out_dir / "bulletin.md"
    markdown.write_text(render_markdown(figures, tree, font, [p.name for p in files]), "utf-8")
    return Bulletin(markdown=markdown, files=files)
