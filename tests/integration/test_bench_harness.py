"""`lianxin bench --quick` end to end on SQLite and PostgreSQL: every scenario, every figure beside a
positive baseline, the table on stdout, progress on stderr, the JSON file, and clear errors for bad
options. Figures are not judged here (never wall-clock in tests); bench/harness measures them.

Both backends run at the same time as two `lianxin bench` processes: each spends most of its time
starting node processes, so together they take about as long as one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bench.harness.measure import Done, open_loop
from services.cli import main

SCENARIOS = {"intake", "idle", "propagation", "catchup", "stats"}
# Rows per scenario: intake 4 at the target rate + 6 at saturation; idle CPU of each of the three
# nodes; 3 percentiles of propagation; catch-up rate, total time, resume delay; 3 percentiles × 3
# levels of stats.
ROWS = {"intake": 10, "idle": 3, "propagation": 3, "catch-up": 3, "stats": 9}


def _lianxin() -> list[str]:
    script = Path(sys.executable).with_name("lianxin")
    return [str(script)] if script.exists() else [sys.executable, "-m", "services.cli"]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    report: dict[str, Any]


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> dict[str, Run | str]:
    """backend → its finished run, or the reason it could not run."""
    out: dict[str, Run | str] = {}
    backends: dict[str, list[str]] = {"sqlite": []}
    try:
        admin = request.getfixturevalue("postgres_admin_url")
        backends["postgres"] = ["--pg-admin-url", admin]
    except pytest.skip.Exception as skipped:  # fails instead under LIANXIN_REQUIRE_SERVICES=1
        out["postgres"] = str(skipped)
    started: dict[str, tuple[subprocess.Popen[str], Path]] = {}
    for backend, extra in backends.items():
        json_path = tmp_path_factory.mktemp(backend) / "bench.json"
        process = subprocess.Popen(
            [*_lianxin(), "bench", "--quick", "--backend", backend, "--json", str(json_path), *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        started[backend] = (process, json_path)
    for backend, (process, json_path) in started.items():
        try:
            stdout, stderr = process.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        report = json.loads(json_path.read_text(encoding="utf-8")) if json_path.exists() else {}
        out[backend] = Run(process.returncode, stdout, stderr, report)
    return out


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_quick_run_reports_every_scenario_beside_its_baseline(
    backend: str, quick_runs: dict[str, Run | str], postgres_admin_url_or_none: str | None
) -> None:
    run = quick_runs[backend]
    if isinstance(run, str):
        pytest.skip(run)
    assert run.returncode == 0, run.stderr[-3000:]
    report = run.report
    assert set(report["scenarios"]) == SCENARIOS
    assert all("error" not in s["details"] for s in report["scenarios"].values())

    rows = report["rows"]
    for prefix, count in ROWS.items():
        assert sum(1 for r in rows if r["scenario"].startswith(prefix)) == count, prefix
    for row in rows:
        # An idle node may take no clock tick at all in a quick run's short window.
        assert row["value"] > 0 or (row["scenario"].startswith("idle") and row["value"] == 0), row
        assert row["baseline"] > 0 and row["ratio"] >= 0, row
        assert row["baseline_is"], row
    assert {r["figure"] for r in rows} >= {"achieved rate", "rate", "latency p99", "catch-up rate", "province p99"}

    # nothing lost on the way: every case reached the province, every piled-up event the parent
    details = report["scenarios"]
    assert details["propagation"]["details"]["never_seen_within_120s"] == 0
    assert details["catchup"]["details"]["events"] >= 40
    assert details["intake"]["details"]["submit_saturation"]["errors"] == 0

    machine = report["machine"]
    assert machine["cpu_count"] >= 1 and machine["cpu_model"] and machine["python"]
    assert machine["git_commit"] and machine["database"]
    assert report["backend"] == backend
    assert report["command"][:4] == ["lianxin", "bench", "--backend", backend]

    # the table on stdout, one line per phase on stderr (not a terminal: no redrawing)
    lines = run.stdout.splitlines()
    assert lines[0].split()[:3] == ["scenario", "figure", "value"]
    for figure in ("achieved rate", "submit → at province p50", "catch-up rate", "county p99"):
        assert any(figure in line for line in lines), figure
    assert "\r" not in run.stderr
    assert any(line.startswith("SubmitCase at 20/s") and "10/10" in line for line in run.stderr.splitlines())

    if backend == "postgres":
        assert report["databases"], "the PostgreSQL run created its databases"
        assert postgres_admin_url_or_none is not None
        engine = sa.create_engine(postgres_admin_url_or_none)
        with engine.connect() as conn:
            left = conn.execute(
                sa.text("SELECT datname FROM pg_database WHERE datname = ANY(:names)"), {"names": report["databases"]}
            ).all()
        engine.dispose()
        assert left == [], "the databases of the run are dropped"


@pytest.fixture()
def postgres_admin_url_or_none(request: pytest.FixtureRequest) -> str | None:
    try:
        return str(request.getfixturevalue("postgres_admin_url"))
    except pytest.skip.Exception:
        return None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rate", "0"], "argument --rate: must be greater than 0, got 0"),
        (["--duration", "-1"], "argument --duration: must be greater than 0"),
        (["--concurrency", "two"], "argument --concurrency: expected a whole number, got 'two'"),
        (["--only", "intake,warp"], "argument --only: unknown scenario 'warp' (choose from intake, idle, propagation"),
        (["--backend", "mysql"], "argument --backend: invalid choice: 'mysql'"),
        (["--intake-replicas", "0"], "argument --intake-replicas: must be greater than 0"),
        (["--intake-replicas", "2"], "argument --intake-replicas: only with --intake-host serve"),
    ],
)
def test_bad_options_are_refused_naming_the_option(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_intake_api_replicas_share_one_database_and_the_load(tmp_path: Path) -> None:
    """`--intake-host serve --intake-replicas 2`: two intake api processes (as deploy/k8s runs them) on
    one database, the clients' calls spread round robin; both take calls and no call fails."""
    json_path = tmp_path / "bench.json"
    argv = ["bench", "--quick", "--backend", "sqlite", "--only", "intake", "--intake-host", "serve"]
    argv += ["--intake-replicas", "2", "--json", str(json_path)]
    run = subprocess.run([*_lianxin(), *argv], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(json_path.read_text(encoding="utf-8"))
    details = report["scenarios"]["intake"]["details"]
    assert details["api_replicas"] == 2 and details["host"] == "lianxin serve --service intake ×2"
    assert details["submit_saturation"]["errors"] == 0 and details["submit_open_loop"]["errors"] == 0
    assert report["command"][-2:] == ["--intake-replicas", "2"]
    calls = details["submit_calls_per_replica"]
    assert len(calls) == 2 and min(calls) > 0.3 * sum(calls), f"round robin should spread the calls: {calls}"


def test_the_intake_benchmark_runs_the_api_as_its_own_processes(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m bench.intake.bench_submit` (default: `lianxin serve` processes, one and two of them):
    every SubmitCase line comes with the api processes' CPU per call and its ratios to the baselines."""
    from bench.intake import bench_submit

    environ_before = dict(os.environ)
    assert bench_submit.main(["--quick", "--backends", "sqlite", "--replicas", "1,2"]) == 0
    # the benchmark's settings (no rate limit, no classifier) stay its own: later tests need both
    assert dict(os.environ) == environ_before
    out = capsys.readouterr().out
    lines = {line.split("  ")[0]: line for line in out.splitlines() if line.startswith(("SubmitCase, ", "grpcio"))}
    for name in ("SubmitCase, 1 api process", "SubmitCase, 2 api processes"):
        figures = lines[name].split()[-8:]  # per s, p50, p99, this, api (CPU ms), ÷ echo, ÷ raw ×N, ÷ raw ×1
        assert float(figures[0].replace(",", "")) > 0 and float(figures[4]) > 0, lines[name]
        assert all(float(ratio) > 0 for ratio in figures[-3:]), lines[name]
    assert "grpcio echo (own process)" in lines
    assert "SubmitCase, 2 api processes on sqlite:" in out


def test_open_loop_measures_from_the_scheduled_send_time() -> None:
    """A server that answers nothing until the schedule is over: a client measuring from its own
    (late) send would hide the wait; the open loop charges it to every request it delayed."""
    held: list[Done] = []
    lock = threading.Lock()
    duration = 0.3

    def release_after_schedule() -> None:
        while True:
            with lock:
                if len(held) == 30:
                    break
            time.sleep(0.01)  # polling for the last request of the schedule
        for done in held:
            done(None)

    def send(done: Done) -> None:
        with lock:
            held.append(done)

    releaser = threading.Thread(target=release_after_schedule)
    releaser.start()
    sample = open_loop(send, rate=100, duration=duration)
    releaser.join()
    assert sample.count == 30 and sample.errors == 0
    # the first request was scheduled at the start and answered after the whole schedule
    assert max(sample.latencies) >= duration * 0.9
    assert sample.ms(0.99) > sample.ms(0.01)


def test_stored_run_prints_each_request_at_zero_and_at_the_preload_side_by_side(tmp_path: Path) -> None:
    json_path = tmp_path / "stored.json"
    run = subprocess.run(
        [*_lianxin(), "bench", "--quick", "--only", "stored", "--stored", "300", "--json", str(json_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(json_path.read_text(encoding="utf-8"))["rows"]
    # A county's requests at 0 and N stored cases, and a city's over a short and a long history.
    rpcs: tuple[str, ...] = ("SubmitCase", "TrackCase", "GetCase", "ListWorkOrders")
    rpcs += ("DrillDown", "DrillDownUnit", "ListVisits", "BookVisit", "PushEvents", "PullDown", "ListReplicas")
    assert {r["figure"] for r in rows} == {f"{rpc} {kind}" for rpc in rpcs for kind in ("p50", "rate")}
    assert all(r["value"] > 0 and r["baseline"] > 0 and "0 stored" in r["baseline_is"] for r in rows)
    header = next(line for line in run.stdout.splitlines() if line.startswith("RPC"))
    assert "p50 ms @0" in header and "p50 ms @300" in header
