"""`lianxin calendar validate`: one line per problem, exit codes an operator's script can test (3 invalid)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.cli import main as lianxin

FIXTURE_2027 = Path(__file__).parent.parent / "fixtures" / "calendar_2027_fixture.yaml"


def test_a_good_file_validates_with_a_summary_and_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert lianxin(["calendar", "validate", str(FIXTURE_2027)]) == 0
    out = capsys.readouterr().out
    assert out == (
        f"{FIXTURE_2027}: OK 2027: 28 days off in 7 holidays, 6 make-up workdays "
        "(source: test fixture, invented data)\n"
    )


def test_a_bad_file_prints_each_problem_on_one_line_and_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "calendar_2027.yaml"
    path.write_text(
        "year: 2027\nholidays: [{name: 春节, from: 2027-02-05, to: 2027-02-12}]\nworkdays: [2027-02-15, 2027-02-30]\n",
        "utf-8",
    )
    assert lianxin(["calendar", "validate", str(path)]) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"{path}: workdays[0]: 2027-02-15 is a Monday; make-up workdays fall on weekends",
        f"{path}: workdays[1]: 2027-02-30 is not a date (day is out of range for month)",
        f"{path}: 2 problems; nothing loaded",
    ]


def test_a_file_named_for_another_year_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "calendar_2028.yaml"
    path.write_text(FIXTURE_2027.read_text("utf-8"), "utf-8")
    assert lianxin(["calendar", "validate", str(path)]) == 3
    assert f"{path}: year: 2027, expected 2028" in capsys.readouterr().err
    # --year says which year is meant when the name says nothing or something else.
    assert lianxin(["calendar", "validate", str(path), "--year", "2027"]) == 0


def test_a_missing_file_is_one_line_and_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert lianxin(["calendar", "validate", str(tmp_path / "calendar_2027.yaml")]) == 3
    (line,) = capsys.readouterr().err.splitlines()
    assert line == f"cannot read {tmp_path / 'calendar_2027.yaml'}: No such file or directory"


def test_load_refuses_a_bad_file_before_calling_any_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "calendar_2027.yaml"
    path.write_text("year: 2027\nholidays: []\n", "utf-8")
    # No node listens on port 9 (discard): a call would fail with exit 4, the check stops it first.
    assert lianxin(["calendar", "load", str(path), "--node", "127.0.0.1:9"]) == 3
    assert "nothing loaded" in capsys.readouterr().err
