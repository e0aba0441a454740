"""Hotspot early warning (热点预警): a category rising in a region against its own baseline.

Plain code. For every (region, category) the recent window's count is compared with what the same
cell's baseline rate predicts, with a one-sided Poisson test:

    expected = (baseline_count + 1) / baseline_length * window_length   # +1: a never-seen cell is not "infinitely" hot
    p        = P(X >= count | Poisson(expected))

A cell is a hotspot when ``p < p_value`` (default 1e-4, strict because many cells are tested at
once), ``count >= min_count`` and ``count >= min_ratio * expected``. The score is -log10(p).
Keywords are jieba TF-IDF tags of the window's texts; ``topics.py`` names what the cases are about.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from scipy.stats import poisson

from services.common.clock import to_utc
from services.stats.topics import Topic, TopicRules


@dataclass(frozen=True)
class HotspotRules:
    window: timedelta = timedelta(hours=24)
    baseline: timedelta = timedelta(days=28)
    p_value: float = 1e-4
    min_count: int = 5
    min_ratio: float = 3.0
    keywords: int = 8
    examples: int = 5
    topic: TopicRules = field(default_factory=TopicRules)


@dataclass(frozen=True)
class CaseSighting:
    """One case as the detector sees it."""

    case_id: str
    region_code: str
    category: str
    submitted_at: datetime


@dataclass(frozen=True)
class Hotspot:
    region_code: str
    category: str
    count: int
    baseline: float
    score: float
    keywords: list[str]
    example_case_ids: list[str]
    topics: list[Topic] = field(default_factory=list)  # what the cases are about (topics.py)


def detect(
    cases: Iterable[CaseSighting],
    *,
    as_of: datetime,
    rules: HotspotRules,
    texts: Mapping[str, str] | None = None,
) -> list[Hotspot]:
    """Hotspots among ``cases`` (already limited to the asked region), hottest first."""
    as_of = to_utc(as_of)
    window_start = as_of - rules.window
    baseline_start = window_start - rules.baseline
    recent: dict[tuple[str, str], list[CaseSighting]] = {}
    before: Counter[tuple[str, str]] = Counter()
    for case in cases:
        at = to_utc(case.submitted_at)
        if not case.category or at >= as_of or at < baseline_start:
            continue
        cell = (case.region_code, case.category)
        if at >= window_start:
            recent.setdefault(cell, []).append(case)
        else:
            before[cell] += 1
    found: list[Hotspot] = []
    for spot in judge({cell: len(members) for cell, members in recent.items()}, before, rules=rules):
        members = recent[(spot.region_code, spot.category)]
        members.sort(key=lambda c: (c.submitted_at, c.case_id), reverse=True)
        words = keywords([texts.get(c.case_id, "") for c in members], rules.keywords) if texts else []
        found.append(replace(spot, keywords=words, example_case_ids=[c.case_id for c in members[: rules.examples]]))
    return found


def judge(
    recent: Mapping[tuple[str, str], int], before: Mapping[tuple[str, str], int], *, rules: HotspotRules
) -> list[Hotspot]:
    """The (region, category) cells whose window count is a hotspot against their baseline count,
    hottest first, without keywords or examples (the caller fetches those for these few cells)."""
    ratio = rules.window / rules.baseline
    found: list[Hotspot] = []
    for (region, category), count in recent.items():
        if not category:
            continue
        expected = (before.get((region, category), 0) + 1) * ratio
        if count < rules.min_count or count < rules.min_ratio * expected:
            continue
        p = float(poisson.sf(count - 1, expected))
        if p >= rules.p_value:
            continue
        found.append(
            Hotspot(
                region_code=region,
                category=category,
                count=count,
                baseline=expected,
                score=-math.log10(max(p, 1e-300)),
                keywords=[],
                example_case_ids=[],
            )
        )
    found.sort(key=lambda h: (-h.score, h.region_code, h.category))
    return found


_jieba_ready = False


def keywords(texts: Sequence[str], top: int) -> list[str]:
    """Most characteristic words of ``texts`` (jieba TF-IDF), numbers and single characters left out."""
    global _jieba_ready
    import jieba
    import jieba.analyse

    if not _jieba_ready:
        jieba.setLogLevel(logging.WARNING)  # jieba prints its dictionary loading to stderr otherwise
        _jieba_ready = True
    joined = "\n".join(t for t in texts if t)
    if not joined:
        return []
    tags = jieba.analyse.extract_tags(joined, topK=top * 2)
    return [str(t) for t in tags if len(t) > 1 and not any(ch.isdigit() for ch in t)][:top]
