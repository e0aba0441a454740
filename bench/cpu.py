"""CPU seconds of other processes, read from /proc (Linux), so a benchmark can say where the CPU went."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pids: Iterable[int]) -> float | None:
    """User + system CPU of ``pids`` (their threads included); None where /proc cannot tell."""
    total = 0.0
    for pid in pids:
        try:
            # Fields after the command name (which may hold spaces): utime and stime are 14th and 15th.
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


def postgres_cpu_seconds() -> float | None:
    """CPU of every process named ``postgres`` on this machine (a local server's backends and workers)."""
    pids = []
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:
        return None
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == "postgres":
                pids.append(int(entry.name))
        except OSError:
            continue  # ended meanwhile
    total = 0.0
    for pid in pids:
        seconds = process_cpu_seconds([pid])
        total += seconds or 0.0  # a backend that ended meanwhile took its CPU with it
    return total if pids else None


def process_kernel_seconds(pids: Iterable[int]) -> float | None:
    """System (kernel) CPU of ``pids``: futex waits and wake-ups when threads hand a lock over, syscalls."""
    total = 0.0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[12]) / _TICKS
        except (OSError, IndexError):
            return None
    return total


def context_switches(pids: Iterable[int]) -> int:
    """Context switches (voluntary and not) of every live thread of ``pids``: each time a thread gave up
    a core (to wait for the GIL, a lock, I/O) or was made to. Threads that ended took their count along."""
    total = 0
    for pid in pids:
        for status in Path(f"/proc/{pid}/task").glob("*/status"):
            try:
                for line in status.read_text().splitlines():
                    if "ctxt_switches:" in line:
                        total += int(line.split()[-1])
            except (OSError, ValueError):
                continue  # ended meanwhile
    return total
