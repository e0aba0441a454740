"""The exchange benchmark's code path runs with tiny sizes (figures are not asserted)."""

from __future__ import annotations

from pathlib import Path

from bench.exchange.replication import catch_up, propagation
from services.common.regions import RegionTree


def test_benchmark_code_path_runs(tmp_path: Path) -> None:
    link_rate, base_rate = catch_up(20, tmp_path, RegionTree.load())
    assert link_rate > 0 and base_rate > 0
    timed, p50, p99 = propagation(20.0, 0.2, tmp_path)
    assert timed == 4 and 0 < p50 <= p99
