"""Exchange benchmark: catch-up replication rate per link, and county → province propagation latency.

    python -m bench.exchange.replication [--events 20000] [--rate 50] [--seconds 10]

Catch-up: a child with a backlog of N case events in its up-log (SQLite) pushes them over real
gRPC to a parent node, which validates and stores each once; events/s is N over the wall time.
Measured twice: with the parent running the exchange service alone (the link itself), and with
all five services, where stats and routing consume every republished replica in the same process.
The baseline in the same run is a bare SQLite insert of the same rows at the parent (no gRPC,
no validation), so the ratio shows what the link costs over the storage alone.
Latency: three real nodes (511102 → 511100 → 510000) on loopback; case events are emitted at the
county at a steady rate and timed until they appear on the province's bus.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from lianxin.common.v1 import common_pb2
from lianxin.events.v1 import events_pb2

from services.common.db import make_engine, make_session_factory, transaction
from services.common.events import envelope
from services.common.migrations import upgrade
from services.common.regions import RegionTree
from services.common.service import BusEvent, Subscription
from services.common.settings import SERVICES, Settings
from services.exchange.link import ParentLink
from services.exchange.models import replica
from services.exchange.store import ExchangeStore
from services.node import Node


def _event(case_no: int, *, now: datetime) -> events_pb2.EventEnvelope:
    case_id = f"511102-20261122-{case_no:06d}"
    return envelope(
        payload_field="case_registered",
        payload=events_pb2.CaseRegistered(
            case=common_pb2.Case(case_id=case_id, title="噪音扰民", region_code="511102")
        ),
        case_id=case_id,
        version=1,
        owner_node="511102",
        owner_epoch=1,
        origin_node="511102",
        origin_service="intake",
        occurred_at=now,
    )


def catch_up(
    events: int, workdir: Path, regions: RegionTree, *, services: Sequence[str] = ("exchange",)
) -> tuple[float, float]:
    """(events/s over the link, events/s of the bare-insert baseline); the parent runs ``services``."""
    workdir = workdir / "-".join(services)
    workdir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(f"sqlite:///{workdir / 'child-exchange.db'}", service="exchange")
    upgrade(engine, "exchange")
    child = ExchangeStore(make_session_factory(engine), node="511102", regions=regions, clock=lambda: datetime.now(UTC))
    now = datetime.now(UTC)
    bodies = [_event(i, now=now) for i in range(1, events + 1)]
    for env in bodies:
        child.record_local(env, env.SerializeToString())
    settings = Settings(node="511100", data_dir=workdir / "parent", metrics_port=None, log_json=False)
    parent = Node(settings, services=tuple(services)).start()
    try:
        link = ParentLink(
            child, parent_node="511100", address=parent.address, batch_size=500, max_batches_per_run=10**6
        )
        started = time.perf_counter()
        link.push_up()
        link_rate = events / (time.perf_counter() - started)
    finally:
        parent.stop(grace=0.5)
    base_engine = make_engine(f"sqlite:///{workdir / 'baseline.db'}", service="exchange")
    upgrade(base_engine, "exchange")
    factory = make_session_factory(base_engine)
    started = time.perf_counter()
    for chunk in range(0, events, 500):
        with transaction(factory) as session:
            session.execute(
                replica.insert(),
                [
                    dict(case_id=e.case_id, version=1, event_id=e.event_id, event_type="case_registered",
                         origin_node="511102", owner_node="511102", owner_epoch=1, child_node="511102", case_sequence=1,
                         body=e.SerializeToString(), received_at=now)
                    for e in bodies[chunk : chunk + 500]
                ],
            )  # fmt: skip
    base_rate = events / (time.perf_counter() - started)
    return link_rate, base_rate


def propagation(rate: float, seconds: float, workdir: Path) -> tuple[int, float, float]:
    """(events timed, p50 ms, p99 ms) from the county's bus to the province's bus at a steady rate."""
    common = {"metrics_port": None, "log_json": False, "relay_interval_s": 0.05}
    province = Node(Settings(node="510000", data_dir=workdir / "p", **common)).start()  # type: ignore[arg-type]
    city = Node(Settings(node="511100", data_dir=workdir / "c", parent=province.address, **common)).start()  # type: ignore[arg-type]
    county = Node(Settings(node="511102", data_dir=workdir / "k", parent=city.address, **common)).start()  # type: ignore[arg-type]
    sent: dict[str, float] = {}
    latencies: list[float] = []
    lock = threading.Lock()

    def arrived(event: BusEvent) -> None:
        with lock:
            if event.event_id in sent:
                latencies.append(time.perf_counter() - sent.pop(event.event_id))

    province.bus.subscribe(Subscription("bench", "exchange", "case_registered", arrived))
    try:
        total = max(1, int(rate * seconds))
        start = time.perf_counter()
        for i in range(total):
            env = _event(500_000 + i, now=datetime.now(UTC))
            with lock:
                sent[env.event_id] = time.perf_counter()
            county.bus.publish(BusEvent(env.event_id, "intake", "case_registered", env.SerializeToString()))
            pause = start + (i + 1) / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)  # pacing the offered load, not ordering
        deadline = time.perf_counter() + 30
        while sent and time.perf_counter() < deadline:
            time.sleep(0.05)
    finally:
        for node in (county, city, province):
            node.stop(grace=0.5)
    ordered = sorted(latencies)
    if not ordered:
        return 0, 0.0, 0.0
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return len(ordered), statistics.median(ordered) * 1000, p99 * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=50.0, help="events/s offered at the county")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    regions = RegionTree.load()
    with tempfile.TemporaryDirectory() as tmp:
        link_rate, base_rate = catch_up(args.events, Path(tmp), regions)
        full_rate, _ = catch_up(args.events, Path(tmp), regions, services=SERVICES)
        timed, p50, p99 = propagation(args.rate, args.seconds, Path(tmp))
    print(f"{'figure':<52} {'value':>12}")
    print(f"{'catch-up 511102 → 511100, events/s (SQLite, gRPC)':<52} {link_rate:>12,.0f}")
    print(f"{'baseline: bare batched INSERT of the replicas, /s':<52} {base_rate:>12,.0f}")
    print(f"{'ratio link / baseline':<52} {link_rate / base_rate:>12.2f}")
    print(f"{'goal 5,000 events/s: ratio link / goal':<52} {link_rate / 5000:>12.2f}")
    print(f"{'catch-up, parent running all five services, /s':<52} {full_rate:>12,.0f}")
    print(f"{'propagation 511102 → 510000 at ' + f'{args.rate:g}/s, events timed':<52} {timed:>12}")
    print(f"{'  p50 ms':<52} {p50:>12.1f}")
    print(f"{'  p99 ms':<52} {p99:>12.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
