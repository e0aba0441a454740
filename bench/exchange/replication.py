"""Exchange benchmark: catch-up replication rate per link, and county → province propagation latency.

    python -m bench.exchange.replication [--events 20000] [--backends sqlite,postgres] [--repeat 3]
                                         [--batch 500] [--rate 50] [--seconds 10]

Catch-up: a child with a backlog of N case events in its up-log pushes them over real gRPC to a
parent node, which validates and stores each once (replica, its own up-log, its outbox); events/s
is N over the wall time of the push. Measured per backend (child and parent each on their own
SQLite files, or their own PostgreSQL databases) with the parent running the exchange service
alone (the link itself), and on SQLite also with all five services, where stats and routing
consume every republished replica in the same process.
The baseline of each backend, in the same run, is a bare batched INSERT of the same replica rows
into a fresh database of that backend (SQLAlchemy Core executemany, batches of the link's size:
no gRPC, no validation, no up-log or outbox), so the ratio shows what the link costs over storing
the replicas alone. Figures are the median of ``--repeat`` runs (the machine is shared).
Latency: three real nodes (511102 → 511100 → 510000) on loopback, SQLite; case events are emitted
at the county at a steady rate and timed until they appear on the province's bus.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
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

PG_ADMIN = os.environ.get("LIANXIN_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
GOAL = 5000.0  # events/s per link (issue 5)


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


Databases = Callable[[str], str | None]  # name -> URL (None: SQLite files in the work directory)


@contextmanager
def postgres_databases() -> Iterator[Databases]:
    """Fresh PostgreSQL databases on demand, all dropped at the end."""
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    run = uuid.uuid4().hex[:8]
    made: list[str] = []

    def make(name: str) -> str:
        database = f"lianxin_xbench_{run}_{len(made)}_{name}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
        made.append(database)
        return admin.url.set(database=database).render_as_string(False)

    try:
        yield make
    finally:
        with admin.connect() as conn:
            for database in made:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()


def _sqlite(_name: str) -> str | None:
    return None


def catch_up(
    events: int,
    workdir: Path,
    regions: RegionTree,
    *,
    services: Sequence[str] = ("exchange",),
    databases: Databases = _sqlite,
    batch: int = 500,
) -> tuple[float, float]:
    """(events/s over the link, events/s of the bare-insert baseline); the parent runs ``services``."""
    workdir = workdir / f"{'-'.join(services)}-{uuid.uuid4().hex[:6]}"
    workdir.mkdir(parents=True, exist_ok=True)
    child_url = databases("child") or f"sqlite:///{workdir / 'child-exchange.db'}"
    engine = make_engine(child_url, service="exchange")
    upgrade(engine, "exchange")
    child = ExchangeStore(make_session_factory(engine), node="511102", regions=regions, clock=lambda: datetime.now(UTC))
    now = datetime.now(UTC)
    bodies = [_event(i, now=now) for i in range(1, events + 1)]
    for chunk in range(0, events, 1000):
        child.record_local_batch([(env, env.SerializeToString()) for env in bodies[chunk : chunk + 1000]])
    settings = Settings(
        node="511100",
        data_dir=workdir / "parent",
        database_url=databases("parent"),
        metrics_port=None,
        log_json=False,
    )
    parent = Node(settings, services=tuple(services)).start()
    try:
        link = ParentLink(
            child, parent_node="511100", address=parent.address, batch_size=batch, max_batches_per_run=10**6
        )
        started = time.perf_counter()
        link.push_up()
        link_rate = events / (time.perf_counter() - started)
        link.close()
    finally:
        parent.stop(grace=0.5)
        engine.dispose()
    base_engine = make_engine(databases("baseline") or f"sqlite:///{workdir / 'baseline.db'}", service="exchange")
    upgrade(base_engine, "exchange")
    factory = make_session_factory(base_engine)
    started = time.perf_counter()
    for chunk in range(0, events, batch):
        with transaction(factory) as session:
            session.execute(
                replica.insert(),
                [
                    dict(case_id=e.case_id, version=1, event_id=e.event_id, event_type="case_registered",
                         origin_node="511102", owner_node="511102", owner_epoch=1, child_node="511102", case_sequence=1,
                         body=e.SerializeToString(), received_at=now)
                    for e in bodies[chunk : chunk + batch]
                ],
            )  # fmt: skip
    base_rate = events / (time.perf_counter() - started)
    base_engine.dispose()
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


def _median_catch_up(repeat: int, run: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    results = [run() for _ in range(max(1, repeat))]
    return statistics.median(r[0] for r in results), statistics.median(r[1] for r in results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--repeat", type=int, default=3, help="catch-up runs per figure (the median is printed)")
    parser.add_argument("--batch", type=int, default=500, help="items per PushEvents (LIANXIN_EXCHANGE_BATCH)")
    parser.add_argument("--all-services", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--rate", type=float, default=50.0, help="events/s offered at the county (0: skip)")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    regions = RegionTree.load()
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            name = "SQLite" if backend == "sqlite" else "PostgreSQL"
            if backend == "postgres":
                with postgres_databases() as make:
                    link_rate, base_rate = _median_catch_up(
                        args.repeat,
                        functools.partial(catch_up, args.events, Path(tmp), regions, databases=make, batch=args.batch),
                    )
            else:
                link_rate, base_rate = _median_catch_up(
                    args.repeat, lambda: catch_up(args.events, Path(tmp), regions, batch=args.batch)
                )
            rows += [
                (f"catch-up 511102 → 511100, events/s ({name}, gRPC)", f"{link_rate:,.0f}"),
                (f"  baseline: bare batched INSERT of the replicas ({name}), /s", f"{base_rate:,.0f}"),
                ("  ratio link / baseline", f"{link_rate / base_rate:.2f}"),
                (f"  ratio link / goal ({GOAL:,.0f} events/s)", f"{link_rate / GOAL:.2f}"),
            ]
        if args.all_services:
            full_rate, _ = _median_catch_up(
                1, lambda: catch_up(args.events, Path(tmp), regions, services=SERVICES, batch=args.batch)
            )
            rows.append(("catch-up, parent running all five services (SQLite), /s", f"{full_rate:,.0f}"))
        if args.rate > 0:
            timed, p50, p99 = propagation(args.rate, args.seconds, Path(tmp))
            rows += [
                (f"propagation 511102 → 510000 at {args.rate:g}/s, events timed", f"{timed}"),
                ("  p50 ms", f"{p50:.1f}"),
                ("  p99 ms", f"{p99:.1f}"),
            ]
    print(f"{'figure':<64} {'value':>12}")
    for label, value in rows:
        print(f"{label:<64} {value:>12}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
