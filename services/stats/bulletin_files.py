"""The bulletin's data files: one CSV per table (UTF-8 with BOM, so Excel opens the Chinese right) and
the PNG charts (matplotlib, Agg backend). Without a CJK font the charts use codes, which the Markdown
explains.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.common.regions import RegionTree
from services.stats.bulletin_markdown import CHANNEL_NAMES, REGION_RATES, SERIES_NAMES, topic_line
from services.stats.domain import compute

if TYPE_CHECKING:
    from services.stats.bulletin import BulletinFigures

_CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "SimHei")
Table = tuple[str, Sequence[str], Sequence[Sequence[Any]]]


def cjk_font() -> str | None:
    """Name of an installed CJK font matplotlib can use, or None."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    for name in _CJK_FONTS:
        if name in installed:
            return name
    return None


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8-sig") as fh:  # BOM: Excel opens Chinese CSV right
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_tables(out_dir: Path, figures: BulletinFigures, tree: RegionTree) -> list[Path]:
    """The CSV files, in the order the bulletin lists them."""
    tables = [*_volume_tables(figures, tree), *_ranking_tables(figures, tree), *_unit_tables(figures)]
    return [write_csv(out_dir / name, header, rows) for name, header, rows in tables]


def _volume_tables(figures: BulletinFigures, tree: RegionTree) -> list[Table]:
    received = max(figures.total.received, 1)
    return [
        (
            "summary.csv",
            ["metric", "value", "numerator", "denominator", "previous_month_value", "definition"],
            [
                (n, f"{v.value:.4f}", v.numerator, v.denominator, f"{p.value:.4f}", v.definition)
                for n, v, p in figures.summary
            ],
        ),
        (
            "volume_by_category.csv",
            ["category", "received", "share"],
            [(k or "(未分类)", a.received, f"{a.received / received:.4f}") for k, a in figures.categories],
        ),
        (
            "volume_by_channel.csv",
            ["channel", "received", "share"],
            [(k, a.received, f"{a.received / received:.4f}") for k, a in figures.channels],
        ),
        (
            "rates_by_region.csv",
            ["region_code", "name", "received", *REGION_RATES],
            [
                (code, tree.get(code).name, agg.received, *[f"{compute(m, agg).value:.4f}" for m in REGION_RATES])
                for code, agg in figures.child_rows
            ],
        ),
    ]


def _ranking_tables(figures: BulletinFigures, tree: RegionTree) -> list[Table]:
    return [
        (
            "ranking_regions.csv",
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
                for r in figures.ranking
            ],
        ),
        (
            "ranking_units.csv",
            ["rank", "unit_id", "value", "cases", "change_vs_previous", "flagged_for_interview"],
            [
                (r.rank or "", r.key, f"{r.value:.4f}", r.cases, f"{r.change_vs_previous:+.4f}", r.flagged)
                for r in figures.units
            ],
        ),
    ]


def _unit_tables(figures: BulletinFigures) -> list[Table]:
    return [
        # 第三方评价: the evaluation group's rate per unit, beside the citizen's own (never mixed).
        (
            "third_party_by_unit.csv",
            ["unit_id", "sampled", "rated", "third_party_satisfaction_rate", "satisfaction_rate"],
            [
                (
                    k,
                    a.tp_sampled,
                    a.tp_rated,
                    f"{compute('third_party_satisfaction_rate', a).value:.4f}",
                    f"{compute('satisfaction_rate', a).value:.4f}",
                )
                for k, a in figures.third_party
            ],
        ),
        # 协办超期: the assisting units late with their part, most cases first.
        ("assist_late_by_unit.csv", ["unit_id", "assist_late"], figures.late_units),
        (
            "hotspots.csv",
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
                    "；".join(topic_line(t) for t in h.topics),
                )
                for h in figures.spots
            ],
        ),
        # 办事进度推送: notices (not cases) sent and given up, cases whose citizen turned them off.
        (
            "progress_notices_by_unit.csv",
            ["unit_id", "notices_sent", "notices_failed", "notices_opted_out"],
            [(k, a.notices_sent, a.notices_failed, a.notices_off) for k, a in figures.notice_units],
        ),
    ]


def draw_charts(out_dir: Path, figures: BulletinFigures, tree: RegionTree, font: str | None) -> list[Path]:
    """The PNG charts. Without a CJK font, Chinese labels would render as boxes: use codes and explain them."""
    region = tree.get(figures.region_code)
    month = figures.month
    categories, channels = figures.categories, figures.channels
    cat_labels = [k or "(none)" for k, _ in categories] if font else [f"C{i + 1}" for i in range(len(categories))]
    files = [
        bar_chart(
            out_dir / "volume_by_category.png",
            cat_labels,
            [float(a.received) for _, a in categories],
            f"{region.name} {month} 受理量（按诉求分类）" if font else f"{region.code} {month} received by category",
            "件" if font else "cases",
            font,
        ),
        bar_chart(
            out_dir / "volume_by_channel.png",
            [CHANNEL_NAMES.get(k, k) if font else k for k, _ in channels],
            [float(a.received) for _, a in channels],
            f"{region.name} {month} 受理量（按渠道）" if font else f"{region.code} {month} received by channel",
            "件" if font else "cases",
            font,
        ),
    ]
    if figures.child_rows:
        rows = figures.child_rows
        files.append(
            rates_chart(
                out_dir / "rates_by_region.png",
                [tree.get(c).name if font else c for c, _ in rows],
                {(SERIES_NAMES[m] if font else m): [compute(m, agg).value for _, agg in rows] for m in REGION_RATES},
                f"{region.name} {month} 各地办理情况" if font else f"{region.code} {month} rates by region",
                font,
            )
        )
    return files


def bar_chart(path: Path, labels: list[str], values: list[float], title: str, ylabel: str, font: str | None) -> Path:
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


def rates_chart(path: Path, labels: list[str], series: dict[str, list[float]], title: str, font: str | None) -> Path:
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
