"""Operator commands for the node's holiday calendar (``lianxin calendar validate|load|show``) and
the month's third-party evaluation sample (``lianxin evaluation draw|show``).

Exit codes, as for every lianxin command (services/cli.py): 0 done; 2 wrong arguments; 3 invalid:
the file cannot be read or has problems (each printed on one line, nothing loaded), or a node refused
it; 4 a node could not be reached (the other nodes still got it: run the same command again, loading
a year twice is harmless).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

# The exit statuses of services/cli.py (EXIT_INVALID, EXIT_UNAVAILABLE), not imported: `python -m
# services.cli` runs that module as __main__, and importing it again would run it twice.
OK, INVALID, UNAVAILABLE = 0, 3, 4
TIMEOUT_S = 30.0  # a load recomputes the node's provisional deadlines before it answers
_YEAR_IN_NAME = re.compile(r"(?<!\d)(20\d\d)(?!\d)")


def _expected_year(args: argparse.Namespace) -> int | None:
    """--year, else a year the file name states (calendar_2027.yaml), so a mislabelled file is caught."""
    if args.year is not None:
        return int(args.year)
    found = set(_YEAR_IN_NAME.findall(Path(args.file).name))
    return int(found.pop()) if len(found) == 1 else None


def _read(args: argparse.Namespace) -> tuple[str, Any] | None:
    """The file's text and its check, printing every problem; None (and the exit code in args) when unusable."""
    from services.common.calendar import check_calendar_text

    path = Path(args.file)
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        print(f"cannot read {path}: {getattr(error, 'strerror', None) or error}", file=sys.stderr)
        args.exit_code = INVALID
        return None
    check = check_calendar_text(text, str(path), expect_year=_expected_year(args))
    for problem in check.problems:
        print(problem, file=sys.stderr)
    if check.problems:
        count = len(check.problems)
        print(f"{path}: {count} problem{'s' if count > 1 else ''}; nothing loaded", file=sys.stderr)
        args.exit_code = INVALID
        return None
    return text, check


def _summary(year: Any) -> str:
    festivals = len(dict.fromkeys(year.holidays.values()))
    source = f" (source: {year.source})" if year.source else ""
    return (
        f"{year.year}: {len(year.holidays)} days off in {festivals} holidays, "
        f"{len(year.workdays)} make-up workdays{source}"
    )


def cmd_validate(args: argparse.Namespace) -> int:
    read = _read(args)
    if read is None:
        return int(args.exit_code)
    _, check = read
    for year in check.years:
        print(f"{args.file}: OK {_summary(year)}")
    return OK


def _addresses(args: argparse.Namespace) -> list[str]:
    if args.node:
        return list(dict.fromkeys(args.node))
    from services.common.regions import DEFAULT_TOPOLOGY

    # `lianxin up` gives node i the gRPC port base + i (services/federation.py).
    return [f"127.0.0.1:{args.base_port + i}" for i in range(len(DEFAULT_TOPOLOGY))]


def _call(address: str, method: str, request: Any, token: str) -> Any:
    import grpc
    from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc

    from services.common.security import bearer_metadata

    metadata = bearer_metadata(token) if token else None
    with grpc.insecure_channel(address) as channel:
        stub = routing_grpc.RoutingServiceStub(channel)
        return getattr(stub, method)(request, timeout=TIMEOUT_S, metadata=metadata)


def _failure(address: str, error: Exception) -> tuple[str, int]:
    """One line for a node that did not take the call, and the exit status it stands for."""
    import grpc

    if isinstance(error, grpc.RpcError):
        code = error.code().name if error.code() is not None else "UNKNOWN"  # type: ignore[attr-defined]
        status = UNAVAILABLE if code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") else INVALID
        return f"{address}: failed: {code}: {error.details()}", status  # type: ignore[attr-defined]
    return f"{address}: failed: {' '.join(str(error).split())}", UNAVAILABLE


def _each_node(args: argparse.Namespace, method: str, request: Any, show: Any) -> int:
    """Call ``method`` on every node named, one line each; the worst exit status."""
    worst = OK
    for address in _addresses(args):
        try:
            reply = _call(address, method, request, args.token)
        except Exception as error:  # one line per node, never a traceback; the other nodes still get it
            line, status = _failure(address, error)
            print(line, file=sys.stderr)
            worst = max(worst, status)
            continue
        show(address, reply)
    return worst


def cmd_load(args: argparse.Namespace) -> int:
    from lianxin.routing.v1 import routing_service_pb2 as routing_pb2

    read = _read(args)
    if read is None:
        return int(args.exit_code)
    text, check = read
    request = routing_pb2.LoadCalendarRequest(
        file_name=Path(args.file).name, content=text.encode("utf-8"), actor=args.actor
    )
    years = ", ".join(str(y.year) for y in check.years)

    def show(address: str, reply: Any) -> None:
        print(
            f"{address}: loaded {years} from {request.file_name}; "
            f"{reply.recomputed_work_orders} work orders with provisional deadlines recomputed; "
            f"calendar covers until {reply.covered_until} ({reply.days_left} days)"
        )

    return _each_node(args, "LoadCalendar", request, show)


def _year_line(year: Any) -> str:
    if year.origin == "loaded":
        at = year.loaded_at.ToDatetime().strftime("%Y-%m-%d %H:%M UTC")
        origin = f"loaded from {year.file_name} by {year.loaded_by or '?'} at {at}"
    elif year.origin == "file":
        origin = "from LIANXIN_CALENDAR_FILES"
    else:
        origin = "bundled chinese-calendar data"
    source = f"; source: {year.source}" if year.source else ""
    counts = f"{year.holiday_days} days off, {year.make_up_workdays} make-up workdays"
    return f"  {year.year}  {origin} ({counts}{source})"


def cmd_show(args: argparse.Namespace) -> int:
    from lianxin.routing.v1 import routing_service_pb2 as routing_pb2

    def show(address: str, reply: Any) -> None:
        print(f"{address}: calendar covers until {reply.covered_until} ({reply.days_left} days left)")
        package = [y.year for y in reply.years if y.origin == "package"]
        if package and not args.all:
            print(f"  {min(package)}-{max(package)}  bundled chinese-calendar data (--all lists each year)")
        for year in reply.years:
            if year.origin != "package" or args.all:
                print(_year_line(year))

    return _each_node(args, "ListCalendarYears", routing_pb2.ListCalendarYearsRequest(), show)


def _units_line(sample: Any) -> str:
    return ", ".join(f"{u.unit_id} {u.sampled}/{u.closed} ({u.rated} rated)" for u in sample.units) or "no closed cases"


def cmd_evaluation_draw(args: argparse.Namespace) -> int:
    """第三方评价: each node named draws the month's sample of the cases it closed in it (once)."""
    from lianxin.routing.v1 import routing_service_pb2 as routing_pb2

    request = routing_pb2.DrawEvaluationSampleRequest(
        month=args.month, seed=args.seed, percent=args.percent, minimum=args.minimum, actor=args.actor
    )

    def show(address: str, reply: Any) -> None:
        s = reply.sample
        print(
            f"{address}: {s.month} sample of node {s.node} drawn with seed {s.seed} "
            f"({s.percent}% per unit, at least {s.minimum}): {len(reply.items)} cases; {_units_line(s)}"
        )
        for item in reply.items:
            print(f"  {item.unit_id}  {item.case_id}")

    return _each_node(args, "DrawEvaluationSample", request, show)


def cmd_evaluation_show(args: argparse.Namespace) -> int:
    from lianxin.routing.v1 import routing_service_pb2 as routing_pb2

    def show(address: str, reply: Any) -> None:
        s = reply.sample
        print(
            f"{address}: {s.month} sample of node {s.node}, seed {s.seed} ({s.percent}%, at least {s.minimum}): "
            f"{_units_line(s)}"
        )

    request = routing_pb2.ListEvaluationSampleRequest(month=args.month)
    return _each_node(args, "ListEvaluationSample", request, show)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    calendar = subparsers.add_parser(
        "calendar",
        help="check, load and show the official holiday calendar (holidays and 调休) of running nodes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = calendar.add_subparsers(dest="calendar_command", required=True)

    def year_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("file", help="YAML or JSON calendar file (format: docs/routing.md, Calendar)")
        p.add_argument("--year", type=int, help="the year the file must hold (default: the year in its name, if any)")

    def node_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--node",
            action="append",
            metavar="ADDRESS",
            help="gRPC address of a node (host:port); repeat for several. Default: every node of `lianxin up`",
        )
        p.add_argument("--base-port", type=int, default=7400, help="gRPC port of the first node of `lianxin up`")
        p.add_argument("--token", default=os.environ.get("LIANXIN_TOKEN", ""), help="admin token (LIANXIN_TOKEN)")

    validate = sub.add_parser("validate", help="check a calendar file; every problem on one line (exit 3)")
    year_option(validate)
    validate.set_defaults(func=cmd_validate)

    load = sub.add_parser("load", help="check a calendar file and load it into running nodes (no restart)")
    year_option(load)
    node_options(load)
    load.add_argument("--actor", default=os.environ.get("USER", "operator"), help="who loads it (history)")
    load.set_defaults(func=cmd_load)

    show = sub.add_parser("show", help="the calendar years running nodes know, and until when")
    node_options(show)
    show.add_argument("--all", action="store_true", help="list every bundled year too")
    show.set_defaults(func=cmd_show)

    evaluation = subparsers.add_parser(
        "evaluation",
        help="第三方评价: draw and show the month's third-party evaluation sample of running nodes",
        description="Each node draws, per handling unit, a reproducible sample of the cases it closed in the "
        "month (docs/routing.md, 第三方评价); exit 3 when a node refuses (a month drawn already).",
    )
    esub = evaluation.add_subparsers(dest="evaluation_command", required=True)
    draw = esub.add_parser("draw", help="draw the month's sample at each node (once per month and node)")
    draw.add_argument("--month", required=True, help="statistical month YYYY-MM")
    draw.add_argument("--seed", default="", help="seed (letters, digits, - and _); default: a random one, recorded")
    draw.add_argument("--percent", type=int, default=0, help="percent of each unit's closed cases (default 10)")
    draw.add_argument("--minimum", type=int, default=0, help="at least this many per unit (default 3)")
    draw.add_argument("--actor", default=os.environ.get("USER", "operator"), help="who draws it (recorded)")
    node_options(draw)
    draw.set_defaults(func=cmd_evaluation_draw)
    eshow = esub.add_parser("show", help="the month's sample record at each node: seed, rule, counts per unit")
    eshow.add_argument("--month", required=True, help="statistical month YYYY-MM")
    node_options(eshow)
    eshow.set_defaults(func=cmd_evaluation_show)
