"""``lianxin classify`` and ``lianxin locate`` read one text per stdin line and print one answer per line,
and the intake benchmark's code path runs end to end at tiny sizes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from services.cli import main


def run(argv: list[str], stdin: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> list[str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert main(argv) == 0
    return capsys.readouterr().out.splitlines()


def test_locate_prints_a_code_or_an_empty_line_per_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run(["locate", "--node", "511100"], "乐山市市中区嘉州大道\n沙湾区某镇\n北京朝阳\n\n", monkeypatch, capsys)
    assert out == ["511102", "511111", "", ""]


def test_classify_prints_one_category_per_line(
    messages_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = "医院收费不合理，看病贵\n孩子入学报名难，学校不给学位\n出租车司机拒载，还绕路多收车费\n"
    out = run(
        ["classify", "--data-dir", str(tmp_path), "--shared-data", str(messages_csv.parent)], texts, monkeypatch, capsys
    )
    assert out == ["卫生计生", "教育文体", "交通运输"]
    assert (tmp_path / "models" / "category.joblib").exists()


def test_benchmark_runs_at_tiny_sizes(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.intake import bench_submit

    monkeypatch.setenv("LIANXIN_INTAKE_CLASSIFIER", "off")
    monkeypatch.setenv("LIANXIN_INTAKE_RATE_LIMIT", "0")
    assert bench_submit.main(["--quick", "--backends", "sqlite", "--seconds", "0.2", "--server", "thread"]) == 0
    out = capsys.readouterr().out
    assert "SubmitCase, node in this process" in out and "grpcio echo" in out and "raw INSERT+COMMIT" in out
    assert "of the raw insert rate with the same concurrency" in out
