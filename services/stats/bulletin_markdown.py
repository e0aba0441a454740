"""The bulletin's text (bulletin.md): the month's figures in the order a 月度通报 reads, in Chinese,
with the definitions of every metric at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from services.common.clock import CHINA
from services.common.regions import RegionTree
from services.stats.domain import COUNT_METRICS, DEFINITIONS, compute
from services.stats.topics import Topic

if TYPE_CHECKING:
    from services.stats.bulletin import BulletinFigures

# The citizen's satisfaction and, beside it, the evaluation group's (第三方评价), per child region.
REGION_RATES = ("reply_rate", "on_time_completion_rate", "satisfaction_rate", "third_party_satisfaction_rate")
SERIES_NAMES = {
    "reply_rate": "回复率",
    "on_time_completion_rate": "按期办结率",
    "satisfaction_rate": "满意率",
    "third_party_satisfaction_rate": "第三方评价满意率",
}
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


def pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def fmt(name: str, value: float) -> str:
    if name in COUNT_METRICS:
        return f"{int(value)}"
    if name.endswith("_workdays"):
        return f"{value:.1f}"
    return pct(value)


def topic_line(topic: Topic) -> str:
    """One topic in the bulletin: label, cases and growth against the window before, units, terms."""
    units = "、".join(topic.units) if topic.units else "未交办"
    return (
        f"{topic.label}（{topic.count} 件，前一时段 {topic.previous_count} 件，变化 {topic.growth:+d}；"
        f"承办单位 {units}；关键词 {'、'.join(topic.top_terms)}）"
    )


def render_markdown(figures: BulletinFigures, tree: RegionTree, font: str | None, file_names: Sequence[str]) -> str:
    md = _summary(figures, tree) + _volume(figures, font)
    if figures.child_rows:
        md += _regions(figures, tree)
    md += _units(figures) + _third_party(figures) + _hotspots(figures, tree) + _notices(figures, tree)
    md += ["", "## 附：指标口径", ""]
    md += [f"- **{name}**: {text}" for name, text in DEFINITIONS.items()]
    md += ["", "数据文件：" + "、".join(file_names) + "。", ""]
    return "\n".join(md)


def _summary(figures: BulletinFigures, tree: RegionTree) -> list[str]:
    month, start, end = figures.month, figures.start.astimezone(CHINA), figures.end.astimezone(CHINA)
    md = [
        f"# {tree.display_name(figures.region_code)} {month} 信访与12345诉求月度通报",
        "",
        f"统计月 {month}：{start.date()} 至 {end.date()}（不含）；"
        f"数据截至 {figures.as_of.astimezone(CHINA):%Y-%m-%d %H:%M}。",
        "",
        "## 一、总体情况",
        "",
        "| 指标 | 本月 | 分子/分母 | 上月 |",
        "|---|---:|---:|---:|",
    ]
    for name, value, before in figures.summary:
        label = DEFINITIONS[name].split(":", 1)[0]
        md.append(
            f"| {label} ({name}) | {fmt(name, value.value)} | {value.numerator}/{value.denominator} "
            f"| {fmt(name, before.value)} |"
        )
    return md


def _volume(figures: BulletinFigures, font: str | None) -> list[str]:
    received = max(figures.total.received, 1)
    md = ["", "## 二、受理量", "", "![按诉求分类](volume_by_category.png)", ""]
    md += ["| 分类 | 件数 | 占比 |", "|---|---:|---:|"]
    for i, (k, a) in enumerate(figures.categories):
        prefix = "" if font else f"C{i + 1} "
        md.append(f"| {prefix}{k or '(未分类)'} | {a.received} | {pct(a.received / received)} |")
    md += ["", "![按渠道](volume_by_channel.png)", "", "| 渠道 | 件数 | 占比 |", "|---|---:|---:|"]
    for k, a in figures.channels:
        md.append(f"| {CHANNEL_NAMES.get(k, k)} | {a.received} | {pct(a.received / received)} |")
    return md


def _regions(figures: BulletinFigures, tree: RegionTree) -> list[str]:
    md = [
        "",
        "## 三、各地办理情况",
        "",
        "![各地办理情况](rates_by_region.png)",
        "",
        "| 地区 | 受理量 | 回复率 | 按期办结率 | 满意率 | 第三方评价满意率 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for code, agg in figures.child_rows:
        md.append(
            f"| {tree.get(code).name} ({code}) | {agg.received} | "
            + " | ".join(pct(compute(m, agg).value) for m in REGION_RATES)
            + " |"
        )
    md += [
        "",
        f"## 四、排名（按期办结率，受理量不足 {figures.min_cases} 件的不参与排名）",
        "",
        "| 名次 | 地区 | 按期办结率 | 件数 | 较上月（百分点） | 连续两月后两名 |",
        "|---:|---|---:|---:|---:|---|",
    ]
    for r in figures.ranking:
        md.append(
            f"| {r.rank or '—'} | {tree.get(r.key).name} | {pct(r.value)} | {r.cases} | "
            f"{r.change_vs_previous * 100:+.1f} | {'⚠ 约谈' if r.flagged else ''} |"
        )
    return md


def _units(figures: BulletinFigures) -> list[str]:
    units, late_units = figures.units, figures.late_units
    flagged_units = [r.key for r in units if r.flagged]
    md = [
        "",
        "## 五、承办单位",
        "",
        f"参与排名单位 {sum(1 for r in units if r.rank)} 个；连续两个月处于后两名、列入约谈名单："
        + ("、".join(flagged_units) if flagged_units else "无")
        + "。",
        "",
        f"协办超期：{figures.total.assist_late} 件案件中有协办单位未在协办时限内答复主办单位"
        + ("（按单位列出如下）。" if late_units else "。"),
    ]
    if late_units:
        md += ["", "| 协办单位 | 协办超期件 |", "|---|---:|"]
        md += [f"| {unit} | {n} |" for unit, n in late_units]
    return md


def _third_party(figures: BulletinFigures) -> list[str]:
    total = figures.total
    tp_total = compute("third_party_satisfaction_rate", total)
    md = [
        "",
        "## 六、第三方评价（抽样）",
        "",
        f"评价组（专家、干部、群众代表）评价本月受理、已抽样的案件 {total.tp_sampled} 件中的 {total.tp_rated} 件，"
        f"第三方评价满意率 {pct(tp_total.value)}（{tp_total.numerator}/{tp_total.denominator}），"
        f"群众满意率 {pct(compute('satisfaction_rate', total).value)}。",
    ]
    if figures.third_party:
        md += ["", "| 承办单位 | 抽样件 | 已评价 | 第三方评价满意率 | 群众满意率 |", "|---|---:|---:|---:|---:|"]
        for k, a in figures.third_party:
            md.append(
                f"| {k} | {a.tp_sampled} | {a.tp_rated} | {pct(compute('third_party_satisfaction_rate', a).value)} | "
                f"{pct(compute('satisfaction_rate', a).value)} |"
            )
    return md


def _hotspots(figures: BulletinFigures, tree: RegionTree) -> list[str]:
    md = ["", "## 七、热点预警", ""]
    if not figures.spots:
        return [*md, "本期未发现热点。"]
    md += ["| 地区 | 分类 | 件数 | 基线 | 关键词 | 示例 |", "|---|---|---:|---:|---|---|"]
    for h in figures.spots:
        md.append(
            f"| {tree.get(h.region_code).name if h.region_code in tree else h.region_code} | {h.category} | "
            f"{h.count} | {h.baseline:.1f} | {'、'.join(h.keywords)} | {' '.join(h.example_case_ids[:3])} |"
        )
    topics = [(h, t) for h in figures.spots for t in h.topics]
    if topics:
        md += ["", "热点话题（相似诉求聚类）："]
        md += [f"- {h.category}：{topic_line(t)}" for h, t in topics]
    return md


def _notices(figures: BulletinFigures, tree: RegionTree) -> list[str]:
    """办事进度推送: what the citizens were told by SMS or WeChat, per child region and unit."""
    total = figures.total
    md = [
        "",
        "## 八、办事进度推送",
        "",
        f"本月受理件向群众发送进度通知 {total.notices_sent} 条，重试后仍未发出 {total.notices_failed} 条；"
        f"{total.notices_off} 件的群众关闭了进度通知。",
    ]
    header = ["| {} | 已发送（条） | 发送失败（条） | 关闭通知（件） |", "|---|---:|---:|---:|"]
    rows = [(f"{tree.get(code).name} ({code})", agg) for code, agg in figures.child_rows]
    for title, listed in (("地区", rows), ("承办单位", figures.notice_units)):
        if listed:
            md += ["", header[0].format(title), header[1]]
            md += [f"| {k} | {a.notices_sent} | {a.notices_failed} | {a.notices_off} |" for k, a in listed]
    return md
