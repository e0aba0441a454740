"""The monthly bulletin (月度通报): Markdown + CSV tables + PNG charts for one region and statistical month.

Reads through the same handlers as the RPCs, so every figure in the bulletin is one a person could
also query (and drill into). Charts use matplotlib's Agg backend; Chinese labels need a CJK font
(Debian ``fonts-noto-cjk``), and without one the charts fall back to ASCII labels (region codes,
category numbers) that the Markdown explains.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from services.common.regions import RegionTree, Tier
from services.stats import handlers
from services.stats.domain import (
    COUNT_METRICS,
    DEFINITIONS,
    Aggregates,
    RankRow,
    StatsConfig,
    compute,
    month_bounds,
    shift_month,
)
from services.stats.hotspot import HotspotRules
from services.stats.topics import Topic

log = logging.getLogger(__name__)

SUMMARY_METRICS = list(DEFINITIONS)
# The citizen's satisfaction and, beside it, the evaluation group's (第三方评价), per child region.
REGION_RATES = ("reply_rate", "on_time_completion_rate", "satisfaction_rate", "third_party_satisfaction_rate")
RANK_METRIC = "on_time_completion_rate"
MIN_CASES = 10
CHANNEL_NAMES = {
    "hotline": "12345热线",
    "web": "网站",
    "app": "手机客户端",
    "wechat": "微信",
    "letter": "信件",
    "leader_board": "领导留言板",
    "national_transfer": "国家转送",
    "walk_in": "走访",
    "video": "视频接访",
}
_CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "SimHei")


@dataclass
class Bulletin:
    markdown: Path
    files: list[Path] = field(default_factory=list)


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def _fmt(name: str, value: float) -> str:
    if name in COUNT_METRICS:
        return f"{int(value)}"
    if name.endswith("_workdays"):
        return f"{value:.1f}"
    return _pct(value)


def cjk_font() -> str | None:
    """Name of an installed CJK font matplotlib can use, or None."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    for name in _CJK_FONTS:
        if name in installed:
            return name
    return None


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8-sig") as fh:  # BOM: Excel opens Chinese CSV right
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _bar_chart(path: Path, labels: list[str], values: list[float], title: str, ylabel: str, font: str | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context({"font.sans-serif": [font, "DejaVu Sans"] if font else ["DejaVu Sans"]}):
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
        bars = ax.bar(range(len(values)), values, color="#3b6ea5")
        ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 5 else 0, ha="right")
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.bar_label(bars, labels=[str(int(v)) for v in values], fontsize=8)
        ax.spines[["top", "right"]].set_visible(False)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    return path


def _rates_chart(path: Path, labels: list[str], series: dict[str, list[float]], title: str, font: str | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    with plt.rc_context({"font.sans-serif": [font, "DejaVu Sans"] if font else ["DejaVu Sans"]}):
        fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(labels) + 3), 4.5), dpi=110)
        x = np.arange(len(labels))
        width = 0.8 / max(len(series), 1)
        for i, (name, values) in enumerate(series.items()):
            ax.bar(x + (i - (len(series) - 1) / 2) * width, [v * 100 for v in values], width, label=name)
        ax.set_xticks(x, labels, rotation=30 if len(labels) > 5 else 0, ha="right")
        ax.set_ylim(0, 118)  # headroom for the legend above the bars
        ax.set_ylabel("%")
        ax.set_title(title)
        ax.legend(loc="upper center", ncol=len(series), fontsize=8, frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    return path


def write_bulletin(
    uow: handlers.WarehouseUnitOfWork,
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
    where = handlers.make_slice(tree, node, region_code=region_code, months=(month,))
    region = tree.get(where.region_code)
    start, end = month_bounds(month, config)
    font = cjk_font()
    if font is None:
        log.warning("no CJK font found; bulletin charts use ASCII labels (install fonts-noto-cjk)")
    files: list[Path] = []

    total = uow.aggregate(where, as_of=as_of, group_by=None).get("", Aggregates())
    previous = uow.aggregate(
        handlers.Slice(where.region_code, where.tier, months=(shift_month(month, -1),)),
        as_of=as_of,
        group_by=None,
    ).get("", Aggregates())
    summary = []
    for name in SUMMARY_METRICS:
        now_v, before_v = compute(name, total), compute(name, previous)
        summary.append((name, now_v, before_v))
    files.append(
        _write_csv(
            out_dir / "summary.csv",
            ["metric", "value", "numerator", "denominator", "previous_month_value", "definition"],
            [(n, f"{v.value:.4f}", v.numerator, v.denominator, f"{p.value:.4f}", v.definition) for n, v, p in summary],
        )
    )

    by_category = uow.aggregate(where, as_of=as_of, group_by="category")
    categories = sorted(by_category.items(), key=lambda kv: (-kv[1].received, kv[0]))
    files.append(
        _write_csv(
            out_dir / "volume_by_category.csv",
            ["category", "received", "share"],
            [(k or "(未分类)", a.received, f"{a.received / max(total.received, 1):.4f}") for k, a in categories],
        )
    )
    by_channel = uow.aggregate(where, as_of=as_of, group_by="channel")
    channels = sorted(by_channel.items(), key=lambda kv: (-kv[1].received, kv[0]))
    files.append(
        _write_csv(
            out_dir / "volume_by_channel.csv",
            ["channel", "received", "share"],
            [(k, a.received, f"{a.received / max(total.received, 1):.4f}") for k, a in channels],
        )
    )

    children = tree.children.get(where.region_code, []) if where.tier is not Tier.COUNTY else []
    by_child = uow.aggregate(where, as_of=as_of, group_by="child") if children else {}
    child_rows = [(code, by_child.get(code, Aggregates())) for code in children]
    files.append(
        _write_csv(
            out_dir / "rates_by_region.csv",
            ["region_code", "name", "received", *REGION_RATES],
            [
                (code, tree.get(code).name, agg.received, *[f"{compute(m, agg).value:.4f}" for m in REGION_RATES])
                for code, agg in child_rows
            ],
        )
    )

    ranking: list[RankRow] = []
    if children:
        ranking = handlers.rank_regions(
            uow,
            tree,
            node,
            parent_region_code=where.region_code,
            metric=RANK_METRIC,
            month=month,
            year="",
            min_cases=min_cases,
            as_of=as_of,
        )
    files.append(
        _write_csv(
            out_dir / "ranking_regions.csv",
            ["rank", "region_code", "name", "value", "cases", "change_vs_previous", "flagged"],
            [
                (
                    r.rank or "",
                    r.key,
                    tree.get(r.key).name,
                    f"{r.value:.4f}",
                    r.cases,
                    f"{r.change_vs_previous:+.4f}",
                    r.flagged,
                )
                for r in ranking
            ],
        )
    )
    units = handlers.rank_units(
        uow,
        tree,
        node,
        region_code=where.region_code,
        metric=RANK_METRIC,
        month=month,
        year="",
        min_cases=min_cases,
        as_of=as_of,
    )
    files.append(
        _write_csv(
            out_dir / "ranking_units.csv",
            ["rank", "unit_id", "value", "cases", "change_vs_previous", "flagged_for_interview"],
            [
                (r.rank or "", r.key, f"{r.value:.4f}", r.cases, f"{r.change_vs_previous:+.4f}", r.flagged)
                for r in units
            ],
        )
    )

    # 第三方评价: the evaluation group's rate per unit, beside the citizen's own (never mixed).
    by_unit = uow.aggregate(where, as_of=as_of, group_by="unit")
    third_party = sorted((k, a) for k, a in by_unit.items() if k and a.tp_sampled)
    files.append(
        _write_csv(
            out_dir / "third_party_by_unit.csv",
            ["unit_id", "sampled", "rated", "third_party_satisfaction_rate", "satisfaction_rate"],
            [
                (
                    k,
                    a.tp_sampled,
                    a.tp_rated,
                    f"{compute('third_party_satisfaction_rate', a).value:.4f}",
                    f"{compute('satisfaction_rate', a).value:.4f}",
                )
                for k, a in third_party
            ],
        )
    )

    # 协办超期: the assisting units late with their part, most cases first.
    late_units = sorted(uow.late_assisting_units(where).items(), key=lambda kv: (-kv[1], kv[0]))
    files.append(_write_csv(out_dir / "assist_late_by_unit.csv", ["unit_id", "assist_late"], late_units))

    spots_at = min(as_of, end)
    spots = handlers.hotspots(
        uow, tree, node, region_code=where.region_code, as_of=spots_at, rules=rules or HotspotRules()
    )
    files.append(
        _write_csv(
            out_dir / "hotspots.csv",
            ["region_code", "category", "count", "baseline", "score", "keywords", "example_case_ids", "topics"],
            [
                (
                    h.region_code,
                    h.category,
                    h.count,
                    f"{h.baseline:.2f}",
                    f"{h.score:.1f}",
                    " ".join(h.keywords),
                    " ".join(h.example_case_ids),
                    "；".join(_topic_line(t) for t in h.topics),
                )
                for h in spots
            ],
        )
    )

    # Charts. Without a CJK font, Chinese labels would render as boxes: use codes and explain them.
    cat_labels = [k or "(none)" for k, _ in categories] if font else [f"C{i + 1}" for i in range(len(categories))]
    files.append(
        _bar_chart(
            out_dir / "volume_by_category.png",
            cat_labels,
            [float(a.received) for _, a in categories],
            f"{region.name if font else region.code} {month} 受理量（按诉求分类）"
            if font
            else f"{region.code} {month} received by category",
            "件" if font else "cases",
            font,
        )
    )
    files.append(
        _bar_chart(
            out_dir / "volume_by_channel.png",
            [CHANNEL_NAMES.get(k, k) if font else k for k, _ in channels],
            [float(a.received) for _, a in channels],
            f"{region.name} {month} 受理量（按渠道）" if font else f"{region.code} {month} received by channel",
            "件" if font else "cases",
            font,
        )
    )
    if child_rows:
        labels = [tree.get(c).name if font else c for c, _ in child_rows]
        series_names = {
            "reply_rate": "回复率",
            "on_time_completion_rate": "按期办结率",
            "satisfaction_rate": "满意率",
            "third_party_satisfaction_rate": "第三方评价满意率",
        }
        files.append(
            _rates_chart(
                out_dir / "rates_by_region.png",
                labels,
                {
                    (series_names[m] if font else m): [compute(m, agg).value for _, agg in child_rows]
                    for m in REGION_RATES
                },
                f"{region.name} {month} 各地办理情况" if font else f"{region.code} {month} rates by region",
                font,
            )
        )

    md = [
        f"# {tree.display_name(region.code)} {month} 信访与12345诉求月度通报",
        "",
        f"统计月 {month}：{start.astimezone(_china()).date()} 至 {(end.astimezone(_china())).date()}（不含）；"
        f"数据截至 {as_of.astimezone(_china()):%Y-%m-%d %H:%M}。",
        "",
        "## 一、总体情况",
        "",
        "| 指标 | 本月 | 分子/分母 | 上月 |",
        "|---|---:|---:|---:|",
    ]
    for name, value, before in summary:
        label = DEFINITIONS[name].split(":", 1)[0]
        md.append(
            f"| {label} ({name}) | {_fmt(name, value.value)} | {value.numerator}/{value.denominator} "
            f"| {_fmt(name, before.value)} |"
        )
    md += [
        "",
        "## 二、受理量",
        "",
        "![按诉求分类](volume_by_category.png)",
        "",
        "| 分类 | 件数 | 占比 |",
        "|---|---:|---:|",
    ]
    for i, (k, a) in enumerate(categories):
        label = k or "(未分类)"
        prefix = "" if font else f"C{i + 1} "
        md.append(f"| {prefix}{label} | {a.received} | {_pct(a.received / max(total.received, 1))} |")
    md += ["", "![按渠道](volume_by_channel.png)", "", "| 渠道 | 件数 | 占比 |", "|---|---:|---:|"]
    for k, a in channels:
        md.append(f"| {CHANNEL_NAMES.get(k, k)} | {a.received} | {_pct(a.received / max(total.received, 1))} |")
    if child_rows:
        md += [
            "",
            "## 三、各地办理情况",
            "",
            "![各地办理情况](rates_by_region.png)",
            "",
            "| 地区 | 受理量 | 回复率 | 按期办结率 | 满意率 | 第三方评价满意率 |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for code, agg in child_rows:
            md.append(
                f"| {tree.get(code).name} ({code}) | {agg.received} | "
                + " | ".join(_pct(compute(m, agg).value) for m in REGION_RATES)
                + " |"
            )
        md += [
            "",
            f"## 四、排名（按期办结率，受理量不足 {min_cases} 件的不参与排名）",
            "",
            "| 名次 | 地区 | 按期办结率 | 件数 | 较上月（百分点） | 连续两月后两名 |",
            "|---:|---|---:|---:|---:|---|",
        ]
        for r in ranking:
            md.append(
                f"| {r.rank or '—'} | {tree.get(r.key).name} | {_pct(r.value)} | {r.cases} | "
                f"{r.change_vs_previous * 100:+.1f} | {'⚠ 约谈' if r.flagged else ''} |"
            )
    flagged_units = [r.key for r in units if r.flagged]
    md += [
        "",
        "## 五、承办单位",
        "",
        f"参与排名单位 {sum(1 for r in units if r.rank)} 个；连续两个月处于后两名、列入约谈名单："
        + ("、".join(flagged_units) if flagged_units else "无")
        + "。",
    ]
    md += [
        "",
        f"协办超期：{total.assist_late} 件案件中有协办单位未在协办时限内答复主办单位"
        + ("（按单位列出如下）。" if late_units else "。"),
    ]
    if late_units:
        md += ["", "| 协办单位 | 协办超期件 |", "|---|---:|"]
        md += [f"| {unit} | {n} |" for unit, n in late_units]
    tp_total = compute("third_party_satisfaction_rate", total)
    md += [
        "",
        "## 六、第三方评价（抽样）",
        "",
        f"评价组（专家、干部、群众代表）评价本月受理、已抽样的案件 {total.tp_sampled} 件中的 {total.tp_rated} 件，"
        f"第三方评价满意率 {_pct(tp_total.value)}（{tp_total.numerator}/{tp_total.denominator}），"
        f"群众满意率 {_pct(compute('satisfaction_rate', total).value)}。",
    ]
    if third_party:
        md += ["", "| 承办单位 | 抽样件 | 已评价 | 第三方评价满意率 | 群众满意率 |", "|---|---:|---:|---:|---:|"]
        for k, a in third_party:
            md.append(
                f"| {k} | {a.tp_sampled} | {a.tp_rated} | {_pct(compute('third_party_satisfaction_rate', a).value)} | "
                f"{_pct(compute('satisfaction_rate', a).value)} |"
            )
    md += ["", "## 七、热点预警", ""]
    if spots:
        md += ["| 地区 | 分类 | 件数 | 基线 | 关键词 | 示例 |", "|---|---|---:|---:|---|---|"]
        for h in spots:
            md.append(
                f"| {tree.get(h.region_code).name if h.region_code in tree else h.region_code} | {h.category} | "
                f"{h.count} | {h.baseline:.1f} | {'、'.join(h.keywords)} | {' '.join(h.example_case_ids[:3])} |"
            )
        topics = [(h, t) for h in spots for t in h.topics]
        if topics:
            md += ["", "热点话题（相似诉求聚类）："]
            md += [f"- {h.category}：{_topic_line(t)}" for h, t in topics]
    else:
        md.append("本期未发现热点。")
    md += ["", "## 附：指标口径", ""]
    md += [f"- **{name}**: {text}" for name, text in DEFINITIONS.items()]
    md += ["", "数据文件：" + "、".join(p.name for p in files) + "。", ""]
    markdown = out_dir / "bulletin.md"
    markdown.write_text("\n".join(md), "utf-8")
    return Bulletin(markdown=markdown, files=files)


def _china() -> Any:
    from services.common.timeutil import CHINA

    return CHINA


def _topic_line(topic: Topic) -> str:
    """One topic in the bulletin: label, cases and growth against the window before, units, terms."""
    units = "、".join(topic.units) if topic.units else "未交办"
    return (
        f"{topic.label}（{topic.count} 件，前一时段 {topic.previous_count} 件，变化 {topic.growth:+d}；"
        f"承办单位 {units}；关键词 {'、'.join(topic.top_terms)}）"
    )
