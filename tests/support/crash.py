"""When the test process dies of a signal, say which test it was in and where the crashing thread stood.

pytest's own faulthandler writes every thread's stack to stderr, which a CI log cuts to its tail.
With LIANXIN_CRASH_DIR set, the suite writes the stacks and the running test's id to files there,
and `python -m tests.support.crash DIR` (the Makefile runs it after a failed session) prints the
test and the crashing thread's stack last, where a truncated log still shows them.
"""

from __future__ import annotations

import faulthandler
import os
import sys
from pathlib import Path
from typing import IO

import pytest

_CURRENT_TEST = "current-test.txt"
_STACKS = "stacks.txt"


class CrashRecorder:
    """Keeps the id of the running test on disk and points faulthandler at a file beside it."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._current = directory / _CURRENT_TEST
        self._current.write_text("", encoding="utf-8")
        self._stacks: IO[str] = (directory / _STACKS).open("w", encoding="utf-8")
        faulthandler.enable(file=self._stacks, all_threads=True)

    def starting(self, nodeid: str) -> None:
        self._current.write_text(nodeid, encoding="utf-8")

    def finished(self) -> None:
        self._current.write_text("", encoding="utf-8")


def report(directory: Path) -> str:
    """The dying test and the current thread's stack, or an empty string when nothing crashed."""
    current = directory / _CURRENT_TEST
    stacks = directory / _STACKS
    test = current.read_text(encoding="utf-8").strip() if current.exists() else ""
    dump = stacks.read_text(encoding="utf-8", errors="replace") if stacks.exists() else ""
    if not test and not dump:
        return ""
    blocks = dump.split("\n\n")
    heads = [b for b in blocks if b.lstrip().startswith(("Fatal Python error", "Extension modules"))]
    crashing = [b for b in blocks if b.lstrip().startswith("Current thread")]
    others = [b for b in blocks if b.lstrip().startswith("Thread ")]
    lines = [*heads, f"({len(others)} other threads' stacks are in {stacks})"]
    # Most recent call first: the top frames say where it died, the rest is pytest's own machinery.
    lines += ["\n".join(b.splitlines()[:16]) for b in crashing] or ["(no stack of the crashing thread was written)"]
    lines.append(f"the test running when it died: {test or '(between tests)'}")
    return "\n".join(lines)


_recorder: CrashRecorder | None = None


@pytest.hookimpl(trylast=True)  # after pytest's own faulthandler set-up, which would replace ours
def pytest_configure(config: pytest.Config) -> None:
    global _recorder
    if directory := os.environ.get("LIANXIN_CRASH_DIR"):
        _recorder = CrashRecorder(Path(directory))


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    if _recorder is not None:
        _recorder.starting(nodeid)


def pytest_runtest_logfinish(nodeid: str, location: tuple[str, int | None, str]) -> None:
    if _recorder is not None:
        _recorder.finished()


if __name__ == "__main__":
    text = report(Path(sys.argv[1]))
    if text:
        print(text)
