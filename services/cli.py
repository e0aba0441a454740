"""The ``lianxin`` command: run the federation, a node, one service's api or worker, and operator tools.

Exit status: 0 done; 1 the command ran and found a problem (a service not SERVING, a tampered
audit trail); 2 usage (unknown command or option); 3 invalid (the input or the request was refused:
INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, ...); 4 unavailable (a node, database or broker
could not be reached); 5 internal (a bug: LIANXIN_DEBUG=1 shows the traceback). Errors print one
line, e.g. ``lianxin: INVALID_ARGUMENT: title: must not be empty``.
"""

from __future__ import annotations

import sys

if len(sys.argv) > 1 and sys.argv[1] == "worker":
    # nameko needs eventlet's monkey patch before any other module creates locks, sockets or
    # threads (DESIGN §4); the worker is the only command that patches, api processes never do.
    import eventlet

    eventlet.monkey_patch()

import argparse
import gc
import importlib
import importlib.metadata
import logging
import os
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeAlias

# Only light modules at import time: `lianxin --help` must not load grpc, SQLAlchemy, pydantic or the
# science stack (tests/unit/test_cli.py checks). Every command imports what it needs when it runs,
# and so does every commands.py that registers more of them.
from services.common.names import SERVICES

if TYPE_CHECKING:
    from services.common.settings import Settings
    from services.federation import Federation

log = logging.getLogger("lianxin")

EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_INVALID = 3
EXIT_UNAVAILABLE = 4
EXIT_INTERNAL = 5


class Unavailable(Exception):
    """Something the command needs did not answer: a node, a database, a broker (exit 4)."""


class Invalid(Exception):
    """The command's input cannot be used: a topology file, a list of nodes (exit 3)."""


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (exit 2), like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"lianxin: USAGE: {message} (see {self.prog} --help)\n")


def _configure_process(settings: Settings, name: str) -> None:
    """Logs and tracing of one process (``name`` is its OpenTelemetry service.name unless OTEL_SERVICE_NAME)."""
    from services.common.logs import configure_logging
    from services.common.telemetry import configure_tracing

    configure_logging(settings.log_level, json=settings.log_json)
    configure_tracing(name, settings.node, settings.otel_exporter, environ=os.environ)


def cmd_up(args: argparse.Namespace) -> int:
    """Start the embedded federation and supervise it until Ctrl-C: a node that dies is started again."""
    import time

    from services.common.regions import RegionTree
    from services.federation import Federation

    placement = None
    if args.topology:
        from services.topology import TopologyError, load_topology

        try:
            placement = load_topology(args.topology, RegionTree.load(), hosts=args.hosts)
        except TopologyError as error:
            raise Invalid(str(error)) from None
    federation = Federation(
        placement=placement,
        data_dir=Path(args.data_dir),
        base_port=args.base_port,
        metrics_base_port=args.metrics_port,
        # the nodes' own logs would drown the endpoint table; LIANXIN_LOG_LEVEL=INFO brings them back
        extra_env={"LIANXIN_LOG_LEVEL": os.environ.get("LIANXIN_LOG_LEVEL", "WARNING")},
        # A gateway is a process per node: a topology's tree runs without them (one can be started by hand).
        web_base_port=None if placement is not None else args.web_port or None,
        secure=args.secure,
    )

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # Explicit handlers: SIGTERM (a supervisor) and SIGINT even when started in the background.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    # Another federation on these ports would answer our health checks: refuse before starting anything.
    federation.check_ports_free()
    print(f"starting {len(federation.nodes)} nodes (data in {args.data_dir}) ...", flush=True)
    try:
        sign_in = ""
        if args.web_port and placement is None:
            from services.federation import demo_sign_in

            sign_in = demo_sign_in(federation)
        try:
            federation.start(ready_timeout_s=args.ready_timeout, progress=lambda line: print(line, flush=True))
        except TimeoutError as error:
            raise Unavailable(f"{error}; on a busy machine give it longer with --ready-timeout") from None
        print(federation.describe(RegionTree.load()), flush=True)
        if sign_in:
            print(sign_in, flush=True)
        if federation.secure:
            print(secure_instructions(federation), flush=True)
        print("all nodes SERVING; a node that stops is started again; Ctrl-C stops them", flush=True)
        federation.supervise(lambda line: print(f"{time.strftime('%H:%M:%S')} {line}", flush=True), threading.Event())
        return 0
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    finally:
        federation.stop()


def secure_instructions(federation: Federation) -> str:
    """What an operator needs to reach a secure federation: the PKI, and an admin token per node."""
    pki = federation.pki_dir
    lines = [f"mutual TLS: CA {pki / 'ca.pem'}, node certificates and keys {pki}/<node>.pem|.key", "admin tokens:"]
    lines += [f"  {code}  {token}" for code, token in federation.admin_tokens().items()]
    if federation.national_address:
        lines.append(f"national simulator: mutual TLS with {pki / '100000.pem'}")
    lines.append(f"the scripted day over TLS: lianxin demo --secure --data-dir {federation.data_dir}")
    return "\n".join(lines)


def _wait_for_signal() -> None:
    _freeze_start_up_heap()  # the process has started
    stop = threading.Event()

    def handler(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    stop.wait()


def _freeze_start_up_heap() -> None:
    """Take what start-up made (modules, mappers, each node's services and caches: they live as long
    as the process) out of the collector's reach, or each full collection walks it again with the GIL
    held: a Sichuan host paused ~1 s at a time in its first seconds of load (issue 21)."""
    gc.collect()  # what start-up already dropped is freed, not kept for good
    gc.freeze()


def cmd_node(_args: argparse.Namespace) -> int:
    """One embedded node (all five services on one port), configured by LIANXIN_* variables."""
    from services.common.settings import Settings
    from services.node import Node

    settings = Settings()
    _configure_process(settings, "lianxin-node")
    node = Node(settings).start()
    public = f", public :{node.public_port}" if node.public_port else ""
    print(f"node {settings.node} serving on {node.address} (metrics :{node.metrics_port}{public})", flush=True)
    _wait_for_signal()
    node.stop()
    return 0


def cmd_host(args: argparse.Namespace) -> int:
    """Many nodes in one process (services/host.py), by --nodes or by a topology's --host-index."""
    from services.common.regions import RegionTree
    from services.common.settings import Settings
    from services.host import Host, members_from_codes, members_from_topology
    from services.topology import load_topology

    settings = Settings()
    if args.metrics_port is not None:
        settings = settings.with_overrides(metrics_port=args.metrics_port or None)
    regions = RegionTree.load(settings.regions_file)
    national = args.national or settings.national
    try:
        if args.topology:
            if args.host_index is None:
                raise ValueError("--topology needs --host-index (which host of the topology this process is)")
            topology = load_topology(args.topology, regions, hosts=args.hosts)
            members = members_from_topology(
                topology, args.host_index, base_port=args.base_port, host_address=args.host_address, national=national
            )
        elif args.nodes:
            codes = [code.strip() for code in args.nodes.split(",") if code.strip()]
            members = members_from_codes(codes, regions, parent=settings.parent, national=national)
        else:
            raise ValueError("give --nodes CODE,CODE,... or --topology FILE --host-index N")
    except ValueError as error:  # TopologyError included: one line naming what is wrong
        raise Invalid(str(error)) from None
    _configure_process(settings, "lianxin-host")
    host = Host(settings, members, regions=regions)
    host.start(progress=lambda node: print(f"node {node.code} serving on {node.address}", flush=True))
    print(f"host serving {len(host.nodes)} nodes", flush=True)
    _wait_for_signal()
    host.stop()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Production api process of one service, or of several in one process: gRPC only, never eventlet."""
    if args.service == "web":
        from services.web.commands import serve

        return serve()
    from services.api_process import run_api, service_list

    try:
        services = service_list(args.service)
    except ValueError as error:
        raise Invalid(str(error)) from None
    return run_api(services, _configure_process, _wait_for_signal)


def cmd_worker(args: argparse.Namespace) -> int:
    """Production worker of one service: nameko with the event handlers, timers and outbox relay."""
    # Normally patched at the top of this module already (it must come first); this covers
    # main(["worker", ...]) called from Python.
    import eventlet

    eventlet.monkey_patch()

    from services.common.nameko_worker import run_worker
    from services.common.regions import RegionTree
    from services.common.settings import Settings
    from services.node import build_service

    settings = Settings()
    _configure_process(settings, f"lianxin-{args.service}-worker")
    if not settings.amqp_uri:
        print("LIANXIN_AMQP_URI is required for a worker", file=sys.stderr)
        return 2
    from services.common.crypto import require_configured_keys

    require_configured_keys("lianxin worker", settings.keys)
    parts, _engine = build_service(settings, args.service, regions=RegionTree.load(settings.regions_file))
    if settings.metrics_port is not None:
        # The relay's outbox gauges and the handlers' business metrics live in the worker.
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, addr=settings.grpc_host)
    run_worker(parts, settings)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply a service's migrations (production runs this as a separate step, a Kubernetes Job)."""
    from services.common.db import make_engine, service_database_url
    from services.common.migrations import upgrade
    from services.common.settings import Settings

    settings = Settings()
    for service in [args.service] if args.service else SERVICES:
        engine = make_engine(service_database_url(settings, service), service=service)
        upgrade(engine, service)
        engine.dispose()
        print(f"{service}: migrated", flush=True)
        if settings.amqp_uri and not args.no_broker:
            print(f"{service}: {_declare_queues(settings, service)} event queues declared", flush=True)
    return 0


def _declare_queues(settings: Settings, service: str) -> int:
    """The service's durable event queues, so events published before its worker first starts are kept."""
    from services.common.nameko_worker import declare_queues
    from services.common.regions import RegionTree
    from services.node import build_service

    # Only the subscriptions are wanted: intake's category model must not load or train in a process
    # that exits right after (a model file half written at exit would be worse than none).
    quiet = settings.with_overrides(intake_classifier="off")
    parts, engine = build_service(quiet, service, regions=RegionTree.load(settings.regions_file))
    try:
        return len(declare_queues(parts, settings))
    finally:
        parts.close()
        engine.dispose()


def cmd_demo(args: argparse.Namespace) -> int:
    """A scripted day of cases through the running federation (start it with `lianxin up`)."""
    from services.demo import run

    return run(base_port=args.base_port, secure_data_dir=Path(args.data_dir) if args.secure else None)


def cmd_health(args: argparse.Namespace) -> int:
    """The standard grpc.health.v1 status of every business service at an address."""
    from services.federation import BUSINESS_SERVICES, health_statuses

    statuses = health_statuses(args.address, BUSINESS_SERVICES)
    if set(statuses.values()) == {"UNREACHABLE"}:
        raise Unavailable(f"nothing answers at {args.address}")
    for name, status in statuses.items():
        print(f"{status:<12} {name}")
    return 0 if all(s == "SERVING" for s in statuses.values()) else EXIT_PROBLEM


def cmd_call(args: argparse.Namespace) -> int:
    """A generic call through server reflection (no generated stubs), JSON in and out."""
    import json

    from services.common.errors import InvalidArgument
    from services.common.reflection import ReflectionClient

    try:
        body = json.loads(args.body or "{}")
    except json.JSONDecodeError as error:
        raise InvalidArgument("body", f"not JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(body, dict):
        raise InvalidArgument("body", 'must be a JSON object, e.g. \'{"case_id": "..."}\'')
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []
    with ReflectionClient(args.address, timeout=args.timeout, metadata=metadata) as client:
        if args.list or not args.method:
            for name in client.service_names():
                print(name)
                if args.list and name.startswith("lianxin."):
                    for method in client.method_names(name):
                        print(f"  {method}")
            return 0
        for reply in client.call(args.method, body):
            print(json.dumps(reply, ensure_ascii=False, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lianxin", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_up(sub)
    _add_host(sub)
    _add_node_and_processes(sub)
    _add_operator_tools(sub)
    _add_registered(sub)
    return parser


# What add_subparsers returns (argparse names the type only privately).
Subparsers: TypeAlias = "argparse._SubParsersAction[_Parser]"


def _add_up(sub: Subparsers) -> None:
    up = sub.add_parser("up", help="start the embedded federation (DESIGN §9)")
    up.add_argument("--data-dir", default="var/federation")
    up.add_argument("--base-port", type=int, default=7400, help="gRPC port of the first node; others follow")
    up.add_argument("--metrics-port", type=int, default=9400, help="metrics port of the first node")
    up.add_argument(
        "--ready-timeout", type=float, default=120.0, help="seconds each node may take to serve (default 120)"
    )
    up.add_argument("--web-port", type=int, default=8400, help="web gateway port of the first node; 0: no gateways")
    up.add_argument(
        "--secure",
        action="store_true",
        help="mutual TLS (the national simulator's too), operator tokens and per-node keys",
    )
    up.add_argument(
        "--topology",
        help="'sichuan' (all 205 nodes of the region list) or a YAML tree (docs/operations.md); many nodes per process",
    )
    up.add_argument(
        "--hosts", type=int, help="with --topology: how many host processes (default: the file's, or ~70 nodes each)"
    )
    up.set_defaults(func=cmd_up)


def _add_node_and_processes(sub: Subparsers) -> None:
    node = sub.add_parser("node", help="run one embedded node from LIANXIN_* variables")
    node.set_defaults(func=cmd_node)
    serve = sub.add_parser(
        "serve", help="run a service's gRPC api process, several services' (a,b), or the web gateway"
    )
    serve.add_argument("--service", required=True, help=f"{', '.join(SERVICES)} (or several, comma-separated), or web")
    serve.set_defaults(func=cmd_serve)
    worker = sub.add_parser("worker", help="run one service's nameko worker")
    worker.add_argument("--service", required=True, choices=SERVICES)
    worker.set_defaults(func=cmd_worker)


def _add_host(sub: Subparsers) -> None:
    host = sub.add_parser("host", help="run many nodes in one process (a city and its counties, a tree's share)")
    host.add_argument("--nodes", help="region codes, e.g. 511100,511102,511111 (ports picked freely)")
    host.add_argument("--topology", help="'sichuan' or a YAML topology file (docs/operations.md)")
    host.add_argument("--host-index", type=int, help="which host of the topology this process is (0 first)")
    host.add_argument(
        "--hosts", type=int, help="how many hosts share the topology (default: the file's, or ~70 nodes each)"
    )
    host.add_argument("--base-port", type=int, default=7400, help="with --topology: gRPC port of its first node")
    host.add_argument(
        "--host-address",
        default="127.0.0.1",
        help="with --topology: where host {host} is reached, e.g. lianxin-host-{host}.lianxin-host",
    )
    host.add_argument("--national", help="national system host:port for a root node (default LIANXIN_NATIONAL)")
    host.add_argument(
        "--metrics-port", type=int, help="the host's /metrics port (0: none; default LIANXIN_METRICS_PORT)"
    )
    host.set_defaults(func=cmd_host)


def _add_operator_tools(sub: Subparsers) -> None:
    demo = sub.add_parser("demo", help="run a scripted day of cases through the running federation")
    demo.add_argument("--base-port", type=int, default=7400)
    demo.add_argument(
        "--secure", action="store_true", help="against `lianxin up --secure`: mutual TLS and the nodes' admin tokens"
    )
    demo.add_argument("--data-dir", default="var/federation", help="the data directory `lianxin up --secure` was given")
    demo.set_defaults(func=cmd_demo)

    health = sub.add_parser("health", help="grpc.health.v1 status of the five services at ADDRESS")
    health.add_argument("address")
    health.set_defaults(func=cmd_health)

    call = sub.add_parser("call", help="call any RPC through server reflection: ADDRESS Service/Method JSON")
    call.add_argument("address")
    call.add_argument("method", nargs="?", help="e.g. lianxin.intake.v1.IntakeService/SubmitCase")
    call.add_argument("body", nargs="?", help="request as JSON (proto3 JSON names)")
    call.add_argument("--list", action="store_true", help="list services and their methods")
    call.add_argument("--timeout", type=float, default=10.0)
    call.add_argument("--token", default=os.environ.get("LIANXIN_TOKEN"), help="operator token (default LIANXIN_TOKEN)")
    call.set_defaults(func=cmd_call)

    migrate = sub.add_parser("migrate", help="apply database migrations and declare the event queues on the broker")
    migrate.add_argument("--service", choices=SERVICES)
    migrate.add_argument(
        "--no-broker",
        action="store_true",
        help="only the databases (by default, with LIANXIN_AMQP_URI, also the event queues)",
    )
    migrate.set_defaults(func=cmd_migrate)


def _add_registered(sub: Subparsers) -> None:
    # Each service may contribute operator commands (lianxin classify, lianxin report, ...) through
    # services/<name>/commands.py: register(subparsers) adding parsers with set_defaults(func=...).
    for module_name in (*(f"services.{service}.commands" for service in SERVICES), *EXTRA_COMMAND_MODULES):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        module.register(sub)
    # Commands of other installed trees register through the "lianxin.commands" entry point group:
    # the load and fault harness (lianxin bench, faults, simulate) lives in bench/, a development tree
    # that the image does not carry, so its entry point is there but its module is not: skipped.
    for entry in importlib.metadata.entry_points(group=COMMAND_ENTRY_POINTS):
        try:
            register = entry.load()
        except ModuleNotFoundError as error:
            if error.name is None or not entry.module.startswith(error.name):
                raise  # the tree is there but something it needs is not: say so
            continue
        register(sub)


# The entry point group through which installed trees outside services/ add commands (pyproject.toml).
COMMAND_ENTRY_POINTS = "lianxin.commands"
# Command modules outside the five services: the kernel's (lianxin certs, token, audit verify).
EXTRA_COMMAND_MODULES: tuple[str, ...] = ("services.common.commands", "services.web.commands")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        if os.environ.get("LIANXIN_DEBUG"):
            raise
        code, message, status = describe_error(error)
        print(f"lianxin: {code}: {message}", file=sys.stderr, flush=True)
        return status


# gRPC status codes by the kind of error they are for the person at the command line.
_INVALID_CODES = frozenset(
    {
        "INVALID_ARGUMENT",
        "OUT_OF_RANGE",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "FAILED_PRECONDITION",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "UNIMPLEMENTED",
        "ABORTED",
    }
)
_UNAVAILABLE_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED"})
# Domain errors raised locally (services.common.errors), by class name, as interceptors.status_for maps them.
_DOMAIN_CODES = {
    "InvalidArgument": "INVALID_ARGUMENT",
    "NotFound": "NOT_FOUND",
    "AlreadyExists": "ALREADY_EXISTS",
    "FailedPrecondition": "FAILED_PRECONDITION",
    "StaleOwner": "FAILED_PRECONDITION",
    "PermissionDenied": "PERMISSION_DENIED",
    "Unauthenticated": "UNAUTHENTICATED",
    "Conflict": "ABORTED",
    "ResourceExhausted": "RESOURCE_EXHAUSTED",
}


def _status_for_code(code: str) -> int:
    if code in _INVALID_CODES:
        return EXIT_INVALID
    if code in _UNAVAILABLE_CODES:
        return EXIT_UNAVAILABLE
    return EXIT_INTERNAL


def describe_error(error: Exception) -> tuple[str, str, int]:
    """(status code name, one-line message, exit status) for an error that escaped a command.

    Library modules are looked up in sys.modules rather than imported: an error can only come from
    a library the command has loaded, and the error path must stay as light as --help."""
    grpc = sys.modules.get("grpc")
    if grpc is not None and isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        code = error.code().name
        return code, _one_line(error.details() or code), _status_for_code(code)
    for cls in type(error).__mro__:
        if cls.__module__ == "services.common.errors" and cls.__name__ in _DOMAIN_CODES:
            code = _DOMAIN_CODES[cls.__name__]
            return code, _one_line(str(error)), _status_for_code(code)
    pydantic_core = sys.modules.get("pydantic_core")
    if pydantic_core is not None and isinstance(error, pydantic_core.ValidationError):
        return "INVALID_ARGUMENT", _validation_message(error), EXIT_INVALID
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    if sqlalchemy_exc is not None and isinstance(error, sqlalchemy_exc.OperationalError):
        return "UNAVAILABLE", f"database: {_one_line(str(error.orig or error))}", EXIT_UNAVAILABLE
    if isinstance(error, Invalid):
        return "INVALID_ARGUMENT", _one_line(str(error)), EXIT_INVALID
    if isinstance(error, Unavailable | ConnectionError | TimeoutError):
        return "UNAVAILABLE", _one_line(str(error) or type(error).__name__), EXIT_UNAVAILABLE
    if isinstance(error, FileNotFoundError | IsADirectoryError | NotADirectoryError | PermissionError):
        return "INVALID_ARGUMENT", f"{error.filename}: {error.strerror}", EXIT_INVALID
    if isinstance(error, OSError):
        return "UNAVAILABLE", _one_line(str(error)), EXIT_UNAVAILABLE
    message = f"{type(error).__name__}: {_one_line(str(error))} (LIANXIN_DEBUG=1 shows the traceback)"
    return "INTERNAL", message, EXIT_INTERNAL


def _validation_message(error: object) -> str:
    """A settings error names the environment variable (LIANXIN_NODE), a model error its field."""
    problems = []
    for item in error.errors():  # type: ignore[attr-defined]
        field = ".".join(str(part) for part in item["loc"])
        if getattr(error, "title", "") == "Settings":
            field = f"LIANXIN_{field.upper()}"
        reason = str(item["msg"]).removeprefix("Value error, ")
        problems.append(f"{field}: {reason}" if field else reason)
    return "; ".join(problems)


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
