"""A test process killed by a signal still says, at the end of the log, which test it was in and where."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.crash import report

REPO = Path(__file__).resolve().parents[2]


def test_a_segfaulting_test_is_named_with_the_crashing_frame(tmp_path: Path) -> None:
    (tmp_path / "test_dies.py").write_text(
        "import ctypes\n\ndef test_fine():\n    pass\n\ndef test_reads_address_zero():\n    ctypes.string_at(0)\n",
        encoding="utf-8",
    )
    crash_dir = tmp_path / "crash"
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:pytest_nameko",
            "-q",
            "test_dies.py",
            "--rootdir",
            str(tmp_path),
            "-p",
            "tests.support.crash",
        ],
        cwd=tmp_path,
        env={"LIANXIN_CRASH_DIR": str(crash_dir), "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode < 0 or finished.returncode >= 128, finished.stdout + finished.stderr
    text = report(crash_dir)
    assert text.splitlines()[-1] == "the test running when it died: test_dies.py::test_reads_address_zero"
    assert "in test_reads_address_zero" in text


def test_a_clean_session_reports_nothing(tmp_path: Path) -> None:
    assert report(tmp_path / "never-written") == ""
