"""``lianxin faults``: run the fault scenarios, print the table, write JSON, fail on loss or doubling.

Kept import-light: every ``lianxin`` command (a worker included) builds the parser, so the harness
itself is imported only when ``faults`` runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any


def _machine() -> dict[str, Any]:
    import os

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }


def cmd_faults(args: argparse.Namespace) -> int:
    from bench.faults.infra import CapabilityMissing
    from bench.faults.names import SCENARIOS
    from bench.faults.scenarios import ScenarioResult, Settings, run, table

    scenarios = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else list(SCENARIOS)
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        print(f"unknown scenarios: {', '.join(unknown)}\nknown: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    settings = Settings(
        duration_s=args.duration,
        rate=args.rate,
        outage_s=args.outage,
        delay_ms=args.delay_ms,
        converge_timeout_s=args.converge_timeout,
        pg_stop_mode=args.pg_stop_mode,
        ready_timeout_s=args.ready_timeout,
    )

    # SIGTERM unwinds like Ctrl-C, so the private brokers and the node processes are torn down.
    def terminate(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)

    def progress(result: ScenarioResult) -> None:
        verdict = "ok" if result.ok else "FAIL"
        print(
            f"  {result.scenario}: acked {result.acked}, lost {result.lost}, doubled {result.doubled}, "
            f"converged {result.converged_s} s — {verdict}",
            flush=True,
        )
        for problem in result.problems[:5]:
            print(f"    {problem}", flush=True)

    print(
        f"lianxin faults: {len(scenarios)} scenarios, {settings.duration_s:g} s of load each at "
        f"{settings.rate:g} cases/s, fault held {settings.outage_s:g} s",
        flush=True,
    )
    started = time.monotonic()
    try:
        results = run(scenarios, settings, on_result=progress)
    except CapabilityMissing as missing:
        print(f"cannot run the fault harness here: {missing}", file=sys.stderr)
        return 3
    elapsed = time.monotonic() - started
    print()
    print(table(results))
    print(f"\n{len(results)} scenarios in {elapsed:.0f} s")
    if args.json:
        document = {
            "command": "lianxin faults " + " ".join(sys.argv[2:]),
            "settings": vars(settings),
            "machine": _machine(),
            "elapsed_s": round(elapsed, 1),
            "results": [r.as_dict() for r in results],
        }
        Path(args.json).write_text(json.dumps(document, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        print(f"written {args.json}")
    bad = [r.scenario for r in results if not r.ok]
    if bad:
        print(f"LOST OR DOUBLED (or nothing acked) in: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


def register(sub: Any) -> None:
    from bench.faults.names import SCENARIOS

    parser = sub.add_parser(
        "faults",
        help="fault harness: kill -9, broker and database restarts, link cut/delay under load (docs/faults.md)",
        description=(
            "Runs each scenario on private, loopback-only infrastructure (its own PostgreSQL cluster, "
            "RabbitMQ node and TCP proxy; the machine's shared servers are never touched): steady "
            "SubmitCase load with idempotency keys, a fault mid-run, then counts acknowledged vs. stored, "
            "duplicates and recovery time. Exits 1 if anything is lost or doubled."
        ),
    )
    parser.add_argument("--only", metavar="SCENARIO,...", help=f"comma-separated subset of: {', '.join(SCENARIOS)}")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per scenario (default 20)")
    parser.add_argument("--rate", type=float, default=10.0, help="cases submitted per second (default 10)")
    parser.add_argument("--outage", type=float, default=2.0, help="seconds between fault and its clearing (default 2)")
    parser.add_argument("--delay-ms", type=float, default=300.0, help="link-delay: ms added per chunk each way")
    parser.add_argument(
        "--converge-timeout", type=float, default=120.0, help="max seconds to wait until quiescent (default 120)"
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=120.0,
        help="max seconds a started node process may take to serve (default 120; raise it on a busy machine)",
    )
    parser.add_argument(
        "--pg-stop-mode",
        choices=("immediate", "fast"),
        default="immediate",
        help="postgres-restart: immediate = crash and recovery (default), fast = clean stop",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.set_defaults(func=cmd_faults)
