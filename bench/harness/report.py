"""Rows of figures, the table printed on stdout, the JSON file, and what machine produced them."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Row:
    """One figure beside its baseline from the same run; ``ratio`` = value ÷ baseline.

    For a rate, the ratio is the share of the baseline's ceiling reached (higher is better); for a
    latency, how many times the baseline's latency it takes (lower is better).
    """

    scenario: str
    figure: str
    value: float
    unit: str
    baseline: float
    baseline_is: str

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else 0.0

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["value"] = round(self.value, 4)
        data["baseline"] = round(self.baseline, 4)
        data["ratio"] = round(self.ratio, 4)
        return data


@dataclass
class ScenarioResult:
    name: str
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _number(value: float, unit: str) -> str:
    if unit == "/s":
        return f"{value:,.0f}/s" if value >= 100 else f"{value:,.1f}/s"
    if unit == "ms":
        return f"{value:,.2f} ms" if value < 10 else f"{value:,.1f} ms"
    if unit == "s":
        return f"{value:,.2f} s"
    return f"{value:,.4g} {unit}".strip()


def _ratio(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}×"
    if value >= 10:
        return f"{value:.1f}×"
    return f"{value:.2f}×"


def render_table(rows: Sequence[Row]) -> str:
    """The table on stdout: scenario, figure, value, baseline (value and what it is), ratio."""
    header = ("scenario", "figure", "value", "baseline", "ratio", "baseline is")
    cells = [
        (r.scenario, r.figure, _number(r.value, r.unit), _number(r.baseline, r.unit), _ratio(r.ratio), r.baseline_is)
        for r in rows
    ]
    widths = [max(len(header[i]), *(len(c[i]) for c in cells)) if cells else len(header[i]) for i in range(6)]
    right = {2, 3, 4}

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(widths[i]) if i in right else v.ljust(widths[i]) for i, v in enumerate(values)]
        return "  ".join(parts).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    previous = ""
    for cell in cells:
        scenario = cell[0] if cell[0] != previous else ""
        previous = cell[0]
        out.append(line((scenario, *cell[1:])))
    return "\n".join(out)


def _run(command: Sequence[str]) -> str:
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(database_version: str | None) -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    commit = _run(["git", "rev-parse", "HEAD"])
    dirty = bool(_run(["git", "status", "--porcelain", "--untracked-files=no"])) if commit else None
    mem_total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) // 1024
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_mb": mem_total,
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "database": database_version,
        "git_commit": commit or None,
        "git_dirty": dirty,
    }


def write_json(
    path: Path,
    *,
    argv: Sequence[str],
    started: datetime,
    backend: str,
    options: dict[str, Any],
    machine: dict[str, Any],
    results: Sequence[ScenarioResult],
    databases: Sequence[str] = (),
) -> None:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    document = {
        "timestamp": started.isoformat(timespec="seconds"),
        "command": ["lianxin", "bench", *argv],
        "argv": sys.argv,
        "backend": backend,
        "databases": list(databases),  # PostgreSQL databases created for the run (dropped at its end)
        "options": options,
        "machine": {**machine, "load_average_at_end": [round(x, 2) for x in load] if load else None},
        "scenarios": {r.name: {"details": r.details, "notes": r.notes} for r in results},
        "rows": [row.as_json() for r in results for row in r.rows],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
