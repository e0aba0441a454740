"""``lianxin bench``: run the scenarios, print the table on stdout, write the JSON, show progress on stderr."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.harness.defaults import BACKENDS, DEFAULT_PG_ADMIN
from bench.harness.progress import Progress
from bench.harness.report import ScenarioResult, machine_info, render_table, write_json

# The scenarios and the processes they start load the whole platform: imported when a run starts,
# so that `lianxin --help` stays light.
if TYPE_CHECKING:
    from bench.harness.procs import Backend

SCENARIOS = ("intake", "idle", "propagation", "catchup", "stats", "stored")
# "stored" preloads a database (bench.preload): only when asked for, by --only or --stored N.
DEFAULT_SCENARIOS = ("intake", "idle", "propagation", "catchup", "stats")

# Sizes of a real run and of --quick (seconds; used by the test). Explicit options win over both.
FULL: dict[str, Any] = {
    "rate": 50.0,
    "duration": 10.0,
    "concurrency": 8,
    "workers": 16,
    "idle_seconds": 30.0,
    "propagation_cases": 60,
    "propagation_rate": 2.0,
    "catchup_events": 10_000,
    "stats_cases": 100_000,
    "stats_queries": 50,
    "stats_months": 12,
    "stored": 100_000,
    "stored_calls": 200,
}
QUICK: dict[str, Any] = {
    "rate": 20.0,
    "duration": 0.5,
    "concurrency": 2,
    "workers": 16,
    "idle_seconds": 2.0,
    "propagation_cases": 4,
    "propagation_rate": 4.0,
    "catchup_events": 40,
    "stats_cases": 2_000,
    "stats_queries": 5,
    "stats_months": 3,
    "stored": 2_000,
    "stored_calls": 10,
}


def _positive(kind: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
        return value

    parse.__name__ = name  # argparse names the type in its messages
    return parse


positive_int = _positive(int, "a whole number")
positive_float = _positive(float, "a number")


def scenario_list(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in chosen if name not in SCENARIOS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {', '.join(map(repr, unknown)) or repr(text)} (choose from {', '.join(SCENARIOS)})"
        )
    return tuple(name for name in SCENARIOS if name in chosen)  # always in the documented order


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "bench",
        help="measure intake, idle CPU, propagation, catch-up and stats figures beside same-run baselines",
        description=(
            "Measure the figures operators plan with, each beside a baseline measured in the same run: "
            "idle CPU per node, SubmitCase at a target rate and at saturation, county → province "
            "propagation, catch-up after a cut link, stats query latency. Prints a table, writes JSON. "
            "See docs/performance.md."
        ),
    )
    parser.add_argument("--backend", choices=BACKENDS, default="sqlite", help="database of every node (default sqlite)")
    parser.add_argument(
        "--only",
        type=scenario_list,
        default=None,
        metavar="LIST",
        help=f"comma-separated scenarios to run (default: {','.join(DEFAULT_SCENARIOS)}; also: stored)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds (smoke test)")
    parser.add_argument(
        "--json", type=Path, metavar="PATH", help="where to write the JSON (default var/bench/bench-<utc>.json)"
    )
    sizes = parser.add_argument_group("sizes (defaults: a real run; --quick makes them tiny)")
    sizes.add_argument(
        "--rate", type=positive_float, metavar="N", help=f"intake target rate, requests/s (default {FULL['rate']:g})"
    )
    sizes.add_argument(
        "--duration", type=positive_float, metavar="S", help=f"seconds per intake measurement ({FULL['duration']:g})"
    )
    sizes.add_argument(
        "--concurrency", type=positive_int, metavar="N", help=f"clients at saturation ({FULL['concurrency']})"
    )
    sizes.add_argument(
        "--workers", type=positive_int, metavar="N", help=f"server gRPC threads, node and echo ({FULL['workers']})"
    )
    sizes.add_argument(
        "--idle-seconds",
        type=positive_float,
        metavar="S",
        help=f"how long the idle chain's CPU is measured ({FULL['idle_seconds']:g})",
    )
    sizes.add_argument(
        "--propagation-cases", type=positive_int, metavar="N", help=f"cases timed ({FULL['propagation_cases']})"
    )
    sizes.add_argument(
        "--propagation-rate",
        type=positive_float,
        metavar="N",
        help=f"cases/s offered at the county ({FULL['propagation_rate']:g})",
    )
    sizes.add_argument(
        "--catchup-events",
        type=positive_int,
        metavar="N",
        help=f"up-log events piled up while cut off ({FULL['catchup_events']:,})",
    )
    sizes.add_argument(
        "--stats-cases", type=positive_int, metavar="N", help=f"warehouse size, cases ({FULL['stats_cases']:,})"
    )
    sizes.add_argument(
        "--stats-queries", type=positive_int, metavar="N", help=f"queries per level ({FULL['stats_queries']})"
    )
    sizes.add_argument(
        "--stats-months", type=positive_int, metavar="N", help=f"months of cases ({FULL['stats_months']})"
    )
    sizes.add_argument(
        "--stored",
        type=positive_int,
        metavar="N",
        help="run the stored scenario: SubmitCase, TrackCase, GetCase and a unit's inbox at 0 and at N"
        f" preloaded cases, side by side ({FULL['stored']:,}; issue 20's goal is set at 1000000)",
    )
    sizes.add_argument(
        "--stored-calls", type=positive_int, metavar="N", help=f"calls per RPC and size ({FULL['stored_calls']})"
    )
    parser.add_argument(
        "--intake-host",
        choices=("node", "serve"),
        default="node",
        help="node: lianxin node, all five services (as lianxin up); serve: the intake api process alone",
    )
    parser.add_argument(
        "--intake-replicas",
        type=positive_int,
        default=1,
        metavar="N",
        help="with --intake-host serve: N intake api processes on one database, clients spread round robin"
        " (deploy/k8s runs 2 api replicas per service)",
    )
    parser.add_argument(
        "--pg-admin-url", default=DEFAULT_PG_ADMIN, metavar="URL", help="PostgreSQL to create the databases on"
    )
    parser.add_argument(
        "--workdir", type=Path, metavar="DIR", help="keep SQLite files and node logs here (default: a temp dir)"
    )
    parser.set_defaults(func=run)


@dataclass(frozen=True)
class BenchOptions:
    backend: str
    only: tuple[str, ...]
    quick: bool
    sizes: dict[str, Any]
    intake_host: str
    pg_admin_url: str
    intake_replicas: int = 1

    def command(self) -> list[str]:
        """The command line that repeats this run, every size spelled out."""
        out = ["--backend", self.backend, "--only", ",".join(self.only)]
        for key, value in self.sizes.items():
            out += [f"--{key.replace('_', '-')}", f"{value:g}" if isinstance(value, float) else str(value)]
        if self.intake_host != "node":
            out += ["--intake-host", self.intake_host]
        if self.intake_replicas != 1:
            out += ["--intake-replicas", str(self.intake_replicas)]
        return out


def resolve(args: argparse.Namespace) -> BenchOptions:
    defaults = QUICK if args.quick else FULL
    sizes = {key: getattr(args, key) if getattr(args, key) is not None else value for key, value in defaults.items()}
    if args.intake_replicas != 1 and args.intake_host != "serve":
        print(
            "lianxin bench: error: argument --intake-replicas: only with --intake-host serve"
            " (a node runs its five services in one process)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    only = tuple(args.only) if args.only is not None else DEFAULT_SCENARIOS
    if args.stored is not None and "stored" not in only:
        only = tuple(name for name in SCENARIOS if name in (*only, "stored"))
    if "stored" not in only:
        sizes = {key: value for key, value in sizes.items() if not key.startswith("stored")}
    return BenchOptions(
        args.backend, only, args.quick, sizes, args.intake_host, args.pg_admin_url, args.intake_replicas
    )


def run(args: argparse.Namespace) -> int:
    options = resolve(args)
    started = datetime.now(UTC)
    json_path: Path = args.json or Path("var/bench") / f"bench-{started:%Y%m%dT%H%M%SZ}.json"
    progress = Progress()
    with contextlib.ExitStack() as stack:
        if args.workdir is not None:
            workdir = Path(args.workdir)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lianxin-bench-")))
        from bench.harness.procs import Backend

        backend = Backend(options.backend, workdir / options.backend, admin_url=options.pg_admin_url)
        try:
            version = backend.check()
        except Exception as error:
            where = options.pg_admin_url if options.backend == "postgres" else workdir
            print(f"lianxin bench: {backend.label} at {where} is not available: {error}", file=sys.stderr)
            return 2
        stack.callback(backend.close)  # drops the PostgreSQL databases even after Ctrl-C
        machine = machine_info(version)
        results = run_scenarios(backend, options, progress, stack)
        databases = list(backend.created)
    print(render_table([row for result in results for row in result.rows]), flush=True)
    for result in results:
        if result.name == "stored" and "stored" in result.details:
            from bench.harness.stored import side_by_side

            print("\n" + side_by_side(result), flush=True)
    for result in results:
        for note in result.notes:
            progress.note(f"note ({result.name}): {note}")
    write_json(
        json_path,
        argv=options.command(),
        started=started,
        backend=options.backend,
        options={
            **options.sizes,
            "only": list(options.only),
            "quick": options.quick,
            "intake": options.intake_host,
            "intake_replicas": options.intake_replicas,
        },
        machine=machine,
        results=results,
        databases=databases,
    )
    progress.note(f"JSON written to {json_path}  (lianxin bench {shlex.join(options.command())})")
    failed = [r.name for r in results if "error" in r.details]
    return 1 if failed else 0


def run_scenarios(
    backend: Backend, options: BenchOptions, progress: Progress, stack: contextlib.ExitStack
) -> list[ScenarioResult]:
    from bench.harness import scenarios
    from bench.harness.procs import EchoProcess
    from bench.harness.stored import stored_scenario

    sizes = options.sizes
    results: list[ScenarioResult] = []

    def attempt(name: str, body: Callable[[], ScenarioResult | list[ScenarioResult]]) -> None:
        try:
            produced = body()
        except Exception as error:
            progress.note(f"scenario {name} failed: {error}")
            details = {"error": f"{type(error).__name__}: {error}"}
            results.append(ScenarioResult(name, details=details, notes=[traceback.format_exc()]))
            return
        results.extend(produced if isinstance(produced, list) else [produced])

    echo: EchoProcess | None = None
    if {"intake", "propagation"} & set(options.only):
        echo = EchoProcess(sizes["workers"]).start()
        stack.callback(echo.stop)
    if "intake" in options.only:
        assert echo is not None
        intake = scenarios.IntakeOptions(
            rate=sizes["rate"],
            duration=sizes["duration"],
            concurrency=sizes["concurrency"],
            workers=sizes["workers"],
            host=options.intake_host,
            replicas=options.intake_replicas,
        )
        attempt("intake", lambda: scenarios.intake(backend, echo.address, intake, progress))
    if {"idle", "propagation", "catchup"} & set(options.only):

        def chained() -> list[ScenarioResult]:
            chain = scenarios.Chain(backend, workers=sizes["workers"])
            out: list[ScenarioResult] = []
            try:
                chain.start(progress)
                scenarios.warm_up(chain, progress)
                if "idle" in options.only:
                    idle = scenarios.IdleOptions(seconds=sizes["idle_seconds"])
                    attempt("idle", lambda: scenarios.idle(chain, idle, progress))
                if "propagation" in options.only:
                    assert echo is not None
                    propagation = scenarios.PropagationOptions(
                        cases=sizes["propagation_cases"],
                        rate=sizes["propagation_rate"],
                        echo_round_trips=50 if options.quick else 200,
                    )
                    attempt("propagation", lambda: scenarios.propagation(chain, echo.address, propagation, progress))
                if "catchup" in options.only:
                    catchup = scenarios.CatchupOptions(events=sizes["catchup_events"], concurrency=sizes["concurrency"])
                    attempt("catchup", lambda: scenarios.catchup(chain, catchup, progress))
            finally:
                chain.stop()  # before stats: idle nodes' timers would still take CPU
            return out

        attempt("chain", chained)
    if "stats" in options.only:
        stats = scenarios.StatsOptions(
            cases=sizes["stats_cases"],
            queries=sizes["stats_queries"],
            months=sizes["stats_months"],
            workers=sizes["workers"],
        )
        attempt("stats", lambda: scenarios.stats(backend, stats, progress))
    if "stored" in options.only:
        attempt(
            "stored",
            lambda: stored_scenario(
                backend,
                stored=sizes["stored"],
                calls=sizes["stored_calls"],
                workers=sizes["workers"],
                progress=progress,
            ),
        )
    return results


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.harness.cli`` runs the same command without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="lianxin")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
