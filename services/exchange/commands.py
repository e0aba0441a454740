"""Operator commands: offline packages (``lianxin exchange export|import``) and ``lianxin national-sim``."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

# Only light imports here (lianxin --help loads this module); each command imports what it uses.
if TYPE_CHECKING:
    from services.common.settings import Settings
    from services.exchange.store import ExchangeStore


def _store(settings: Settings) -> ExchangeStore:
    from services.common.db import make_engine, make_session_factory, service_database_url
    from services.common.migrations import upgrade
    from services.common.regions import RegionTree
    from services.common.service import utc_now
    from services.exchange.store import ExchangeStore

    engine = make_engine(service_database_url(settings, "exchange"), service="exchange")
    upgrade(engine, "exchange")
    regions = RegionTree.load(settings.regions_file)
    return ExchangeStore(make_session_factory(engine), node=settings.node, regions=regions, clock=utc_now)


def cmd_export(args: argparse.Namespace) -> int:
    from services.common.service import utc_now
    from services.common.settings import Settings
    from services.exchange.package import PackageKeyMissing, seal, signing_key
    from services.exchange.ports import COMMAND

    settings = Settings()
    try:
        # Production (data keys configured) must name its package key; an embedded node makes its own.
        key = signing_key(
            Path(settings.data_dir) / settings.node,
            production=settings.keys.configured,
            configured=settings.exchange.package_key,
        )
    except PackageKeyMissing as error:
        print(f"refused: {error}", file=sys.stderr)
        return 2
    store = _store(settings)
    rows = store.pending_up(args.since, args.limit, max_bytes=2**62)
    data = seal(
        origin_node=settings.node,
        since=args.since,
        created_at=utc_now().isoformat(),
        items=[(item.position, item.body, item.case_sequence) for item in rows],
        kinds={item.position: item.kind for item in rows if item.kind == COMMAND},
        key=key,
    )
    Path(args.out).write_bytes(data)
    until = rows[-1].position if rows else args.since
    print(
        f"exported {len(rows)} events of {settings.node} after cursor {args.since} to {args.out}; next --since {until}"
    )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from services.common.settings import Settings
    from services.exchange.package import PackageKeyMissing, PackageRefused, open_package, origin_of, verification_keys
    from services.exchange.ports import ENVELOPE, Item

    settings = Settings()
    try:
        data = Path(args.file).read_bytes()
        keys = verification_keys(
            Path(settings.data_dir) / settings.node, origin_of(data), settings.exchange.package_key
        )
        package = open_package(data, key=keys)
    except (OSError, PackageRefused, PackageKeyMissing) as error:
        print(f"refused: {error}", file=sys.stderr)
        return 2
    store = _store(settings)
    regions = store.regions
    if package.origin_node not in regions or regions.parent(package.origin_node) != settings.node:
        print(f"refused: origin {package.origin_node} is not a direct child of {settings.node}", file=sys.stderr)
        return 2
    acked, rejected = store.receive_push(
        package.origin_node,
        [
            Item(position, package.kinds.get(position, ENVELOPE), body, number)
            for position, body, number in package.items
        ],
    )
    print(
        f"imported package from {package.origin_node}: {len(package.items)} items, "
        f"{len(rejected)} quarantined, acknowledged up to {acked}"
    )
    for rejection in rejected:
        print(f"  quarantined position {rejection.position}: {rejection.reason}")
    return 0


def cmd_new_key(_args: argparse.Namespace) -> int:
    """A new package signing key: one line for exchange-key (the child) and exchange-keys/<child> (the parent)."""
    from services.exchange.package import new_package_key

    print(new_package_key())
    return 0


def cmd_national_sim(args: argparse.Namespace) -> int:
    from services.exchange import national_sim

    faults = national_sim.Faults(
        latency_ms=args.latency_ms,
        error_rate=args.error_rate,
        duplicate_rate=args.duplicate_rate,
        reorder=args.reorder,
        seed=args.seed,
    )
    tls_dir = Path(args.tls_dir) if args.tls_dir else None
    server, _ = national_sim.serve(port=args.port, faults=faults, host=args.host, tls_dir=tls_dir)
    print(f"national simulator serving on {server.address}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(1.0)
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    """Compare a node (or every node of the embedded federation) with the replicas above it.

    Exit 0 when every case is held alike, 1 with divergences; a node that does not answer is the
    usual one-line UNAVAILABLE (exit 4) of ``lianxin``."""
    from services.common.regions import DEFAULT_TOPOLOGY
    from services.exchange.reconcile import federation_pairs, settled

    if len(args.addresses) == 1:
        print(
            "lianxin: USAGE: give the node's address and the addresses above it (none: the federation)", file=sys.stderr
        )
        return 2
    if args.addresses:
        pairs = [(args.addresses[0], list(args.addresses[1:]))]
    else:
        pairs = federation_pairs(args.base_port, DEFAULT_TOPOLOGY)
    report = settled(pairs, wait_s=args.wait)
    for divergence in report.divergences:
        print(divergence.line())
    print(report.summary())
    return 0 if not report.divergences else 1


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    exchange = subparsers.add_parser("exchange", help="offline change packages for separated networks")
    sub = exchange.add_subparsers(dest="exchange_command", required=True)
    export = sub.add_parser("export", help="write this node's changes after a cursor as a signed file")
    export.add_argument("--since", type=int, default=0, help="up-log cursor; the package holds what follows it")
    export.add_argument("--out", required=True, help="file to write")
    export.add_argument("--limit", type=int, default=1_000_000, help="at most this many events")
    export.set_defaults(func=cmd_export)
    imp = sub.add_parser("import", help="apply a signed package from a child node (idempotent)")
    imp.add_argument("file")
    imp.set_defaults(func=cmd_import)
    new_key = sub.add_parser("new-key", help="print a new package signing key (docs/exchange.md, package keys)")
    new_key.set_defaults(func=cmd_new_key)

    rec = subparsers.add_parser(
        "reconcile", help="compare every case a node's subtree holds with the replicas above (exit 0: none differ)"
    )
    rec.add_argument(
        "addresses",
        nargs="*",
        help="the node's gRPC address, then its ancestors'; none: the federation of `lianxin up`",
    )
    rec.add_argument("--base-port", type=int, default=7400, help="first gRPC port of `lianxin up` (no addresses given)")
    rec.add_argument("--wait", type=float, default=0.0, help="seconds to retry while replication catches up")
    rec.set_defaults(func=cmd_reconcile)

    sim = subparsers.add_parser("national-sim", help="run the national system simulator with fault injection")
    sim.add_argument("--port", type=int, default=0)
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--latency-ms", type=int, default=0)
    sim.add_argument("--error-rate", type=float, default=0.0)
    sim.add_argument("--duplicate-rate", type=float, default=0.0)
    sim.add_argument("--reorder", action="store_true")
    sim.add_argument("--seed", type=int, default=None)
    sim.add_argument(
        "--tls-dir", default=None, help="mutual TLS: a directory with ca.pem, 100000.pem and 100000.key (lianxin certs)"
    )
    sim.set_defaults(func=cmd_national_sim)
