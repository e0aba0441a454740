"""The warehouse benchmark's code path at a tiny size (figures are not asserted: never wall-clock in tests)."""

from __future__ import annotations

from pathlib import Path

from bench.stats.bench_warehouse import bench_ingest, bench_queries
from services.common.regions import RegionTree


def test_benchmark_runs_at_a_tiny_size(tmp_path: Path) -> None:
    tree = RegionTree.load()
    ingest = bench_ingest(f"sqlite:///{tmp_path / 'ingest.db'}", 12, tree)
    assert ingest.events_per_s > 0 and ingest.cpu_ms_per_event > 0
    run = bench_queries(
        f"sqlite:///{tmp_path / 'query.db'}", cases=2000, months=["2026-09", "2026-10"], queries=2, tree=tree, seed=1
    )
    assert {"metrics province", "metrics city", "metrics county", "rank units city", "hotspots province"} <= set(
        run.latency
    )
    assert all(
        n == 2 or label in ("drill-down province", "baseline: facts province")
        for label, (_, _, n) in run.latency.items()
    )
    assert 500 < run.per_month < 1500  # about half of 2,000 cases in each of two months
