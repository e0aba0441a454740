"""Smoke test: the video benchmark's code path runs with tiny sizes and prints its table."""

from __future__ import annotations

import pytest

from bench.video import bench_slots


def test_benchmark_runs_and_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_slots.main(["--quick", "--threads", "4"]) == 0
    out = capsys.readouterr().out
    assert "slot search" in out and "bookings/s" in out and "ratio" in out
