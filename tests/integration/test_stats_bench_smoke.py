"""The warehouse benchmark's code path at a tiny size (figures are not asserted: never wall-clock in tests)."""

from __future__ import annotations

from pathlib import Path

from bench.stats.bench_warehouse import bench_ingest, bench_queries
from services.common.regions import RegionTree


def test_benchmark_runs_at_a_tiny_size(tmp_path: Path) -> None:
    tree = RegionTree.load()
    assert bench_ingest(f"sqlite:///{tmp_path / 'ingest.db'}", 12, tree) > 0
    _, latency, per_month = bench_queries(
        f"sqlite:///{tmp_path / 'query.db'}", cases=2000, months=["2026-09", "2026-10"], queries=2, tree=tree, seed=1
    )
    assert set(latency) == {"province", "city", "county"}
    assert 500 < per_month < 1500  # about half of 2,000 cases in each of two months
