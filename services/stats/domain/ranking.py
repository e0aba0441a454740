"""一月一通报: rankings of regions or units by a metric, with the change against the previous period
and the 约谈 flag (bottom two twice running).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.stats.domain.metrics import LOWER_IS_BETTER, Aggregates, compute


@dataclass(frozen=True)
class RankRow:
    key: str  # region code or unit id
    value: float
    cases: int
    rank: int  # 0 = not ranked (fewer than min_cases)
    change_vs_previous: float
    flagged: bool


def _ranked(
    metric: str, current: Mapping[str, Aggregates], min_cases: int
) -> tuple[list[tuple[str, float, int]], list[tuple[str, float, int]]]:
    rows = [(key, compute(metric, agg).value, agg.received) for key, agg in current.items()]
    eligible = [r for r in rows if r[2] >= max(min_cases, 1)]
    # Ties break by key so the same data always gives the same table.
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0
    eligible.sort(key=lambda r: (sign * r[1], r[0]))
    left_out = sorted((r for r in rows if r[2] < max(min_cases, 1)), key=lambda r: r[0])
    return eligible, left_out


def bottom_keys(metric: str, aggregates: Mapping[str, Aggregates], min_cases: int, n: int = 2) -> set[str]:
    eligible, _ = _ranked(metric, aggregates, min_cases)
    return {key for key, _, _ in eligible[-n:]} if len(eligible) > n else set()


def rank(
    metric: str,
    current: Mapping[str, Aggregates],
    previous: Mapping[str, Aggregates],
    *,
    min_cases: int,
) -> list[RankRow]:
    """一月一通报: rank by ``metric`` leaving out keys under ``min_cases`` received cases.

    ``change_vs_previous`` is value minus the previous period's value (0 with no previous cases).
    A key is flagged (约谈 list) when it is in the bottom two of this period *and* of the previous
    one, among those ranked in each (a table of two or fewer has no bottom two).
    """
    eligible, left_out = _ranked(metric, current, min_cases)
    bottom_now = {key for key, _, _ in eligible[-2:]} if len(eligible) > 2 else set()
    bottom_before = bottom_keys(metric, previous, min_cases)
    rows: list[RankRow] = []
    for position, (key, value, cases) in enumerate(eligible, start=1):
        before = previous.get(key)
        change = value - compute(metric, before).value if before is not None and before.received else 0.0
        rows.append(RankRow(key, value, cases, position, change, key in bottom_now and key in bottom_before))
    for key, value, cases in left_out:
        before = previous.get(key)
        change = value - compute(metric, before).value if before is not None and before.received else 0.0
        rows.append(RankRow(key, value, cases, 0, change, False))
    return rows
