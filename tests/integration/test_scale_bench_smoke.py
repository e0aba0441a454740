"""`python -m bench.scale` on a small tree (two host processes, two counties): every case submitted
reaches the province, its arrival read from the province's up-log after the load (not polled during
it), and the figures it prints are there. A smoke test: it asserts what the bench reports, never a speed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.scale.run import main

SMALL = Path(__file__).resolve().parents[1] / "fixtures" / "topology_small.yaml"


def test_the_bench_finds_every_case_at_the_province_from_its_up_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--topology", str(SMALL), "--minutes", "0.1", "--rate", "2", "--idle-window", "1", "--settle", "1"]
    exit_code = main([*argv, "--data-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert exit_code == 0, out  # every accepted case reached the province, and the event counts are equal
    assert "reached the province: 12 of 12 accepted cases" in out
    assert "arrival read from the province's up-log after the load" in out
    assert "cores per process under load: host 1" in out and "p50/p99 by minute of sending: min 1:" in out
    assert ": equal;" in out
    # Read from the province's clock against the scheduled sends: a case takes some time, not none and
    # not a day (an unset appended_at would read as 1970 and give 0 ms).
    p50 = float(re.search(r"county → province p50 (\d+) ms", out).group(1))  # type: ignore[union-attr]
    assert 0 < p50 < 60_000, out
