"""Routing benchmark: jurisdiction decisions per second, and one deadline sweep over N open work orders.

    python -m bench.routing.bench_routing                      # N=100,000 on SQLite and PostgreSQL
    python -m bench.routing.bench_routing --n 1000000 --backends sqlite
    python -m bench.routing.bench_routing --pg postgresql+psycopg://postgres@127.0.0.1:5432/postgres

The sweep case is the worst one: every work order is due for its warning, so the sweep loads, decides,
writes a history row, an outbox event and the updated work order for each of them. A second sweep right
after finds nothing due (the ``next_sweep_at`` index), which is what a normal minute looks like.
Peak memory is tracemalloc's peak of Python allocations during the sweep.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, insert, text
from sqlalchemy.orm import sessionmaker

from services.common.regions import RegionTree
from services.routing import handlers
from services.routing.handlers import Routing
from services.routing.jurisdiction import decide, load_catalogue
from services.routing.models import WorkOrderRow, metadata
from services.routing.provisional import ProvisionalCalendar
from services.routing.store import SqlRoutingUnitOfWork, encode_order
from services.routing.timelimits import CATEGORIES, DeadlineKind, TimeLimitPolicy, TimeRules
from services.routing.workorder import WorkOrder

REGISTERED_AT = datetime(2026, 6, 1, 2, tzinfo=UTC)


def bench_decisions(seconds: float = 2.0) -> float:
    tree = RegionTree.load()
    catalogue = load_catalogue("511100", tree)
    regions = ["511100", "511102", "511111", "511112", "511123"]
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for region in regions:
            for category in CATEGORIES:
                decide(region, category, "511100", tree, catalogue)
                n += 1
    return n / (time.perf_counter() - start)


def routing() -> Routing:
    tree = RegionTree.load()
    cal = ProvisionalCalendar()
    return Routing(
        "511102",
        tree,
        load_catalogue("511102", tree),
        TimeRules(TimeLimitPolicy.default(), cal),
        cal,
        new_id=lambda: str(uuid.uuid4()),
    )


def seed(factory: sessionmaker, r: Routing, n: int) -> None:  # type: ignore[type-arg]
    order, _ = WorkOrder.register(
        id="x",
        case_id="c",
        node=r.node,
        tier=r.regions.get(r.node).tier,
        at=REGISTERED_AT,
        actor="system",
        rules=r.rules,
        category="环境保护",
        region_code="511102",
        handling_kind=DeadlineKind.HOTLINE_COMPLAINT,
    )
    order.accept(at=REGISTERED_AT, actor="system", rules=r.rules)
    order.assign(unit_id="lszq-sthjj", at=REGISTERED_AT, actor="system", rules=r.rules)
    order.start(at=REGISTERED_AT, actor="u")
    data = encode_order(order)
    due = min(order.deadlines.values())
    sweep_at = handlers.next_sweep_boundary(order, r.rules)
    rows = []
    with factory() as s:
        for i in range(n):
            rows.append(
                dict(
                    work_order_id=f"WO-{i:08d}",
                    case_id=f"511102-20260601-{i:06d}",
                    node=r.node,
                    unit_id="lszq-sthjj",
                    category="环境保护",
                    region_code="511102",
                    state="IN_PROGRESS",
                    manual_queue=0,
                    manual_reason="",
                    hand_off_to="",
                    data=data,
                    requested_days=0,
                    provisional="",
                    next_due=due,
                    next_sweep_at=sweep_at,
                    version=order.version,
                    created_at=REGISTERED_AT,
                    updated_at=REGISTERED_AT,
                )
            )
            if len(rows) == 10_000:
                s.execute(insert(WorkOrderRow), rows)
                rows = []
        if rows:
            s.execute(insert(WorkOrderRow), rows)
        s.commit()


def bench_sweep(url: str, n: int) -> tuple[float, float, float, int]:
    engine = create_engine(url)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    factory = sessionmaker(engine, expire_on_commit=False)
    r = routing()
    seed(factory, r, n)
    uow = lambda: SqlRoutingUnitOfWork(factory, node=r.node)  # noqa: E731
    now = datetime(2026, 6, 18, 12, tzinfo=UTC)  # past every warning boundary, before the deadline
    tracemalloc.start()
    start = time.perf_counter()
    report = handlers.run_sweep(uow_factory=uow, routing=r, now=now, batch_size=2000)
    full = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    start = time.perf_counter()
    handlers.run_sweep(uow_factory=uow, routing=r, now=now, batch_size=2000)
    idle = time.perf_counter() - start
    metadata.drop_all(engine)
    engine.dispose()
    return full, peak, idle, report.warnings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--decide-seconds", type=float, default=2.0)
    args = parser.parse_args()
    print(f"jurisdiction decide(): {bench_decisions(args.decide_seconds):,.0f} decisions/s")
    print()
    print("| backend | open work orders | full sweep (all due) s | orders/s | peak MiB | idle sweep s |")
    print("|---|---:|---:|---:|---:|---:|")
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{Path(tmp) / 'bench.db'}" if backend == "sqlite" else args.pg
            if backend != "sqlite":
                with create_engine(url).connect() as c:
                    c.execute(text("select 1"))
            full, peak, idle, warned = bench_sweep(url, args.n)
            assert warned == args.n, (warned, args.n)
            print(f"| {backend} | {args.n:,} | {full:.1f} | {args.n / full:,.0f} | {peak:.1f} | {idle:.3f} |")


if __name__ == "__main__":
    main()
