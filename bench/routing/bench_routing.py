"""Routing benchmark: jurisdiction decisions per second, and one deadline sweep over N open work orders.

    python -m bench.routing.bench_routing                      # N=100,000 on SQLite and PostgreSQL
    python -m bench.routing.bench_routing --n 1000000 --backends sqlite
    python -m bench.routing.bench_routing --pg postgresql+psycopg://postgres@127.0.0.1:5432/postgres

The sweep cases are the worst ones: every work order is due at once. The first sweep (timed without
tracing) finds every work order due for its warning and writes, per work order, the updated row, a
history row, a ``deadline_warning`` outbox event and a case-version bump, in batches of ``--batch``.
A second sweep right after finds nothing due (the ``next_sweep_at`` index): a normal minute. A third
sweep, after the deadline, chases every work order (history, a ``chase`` supervision, two events each)
under tracemalloc: its peak is the Python allocation peak; ``ru_maxrss`` is the process's resident peak
(including the seeding). The open work orders are seeded with executemany batches of 10,000 rows.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import re
import resource
import tempfile
import time
import tracemalloc
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, insert, text
from sqlalchemy.orm import sessionmaker

from services.common.regions import RegionTree
from services.routing import handlers
from services.routing.domain import WorkOrder
from services.routing.domain.timelimits import CATEGORIES, DeadlineKind, TimeLimitPolicy, TimeRules
from services.routing.handlers import Routing
from services.routing.jurisdiction import decide, load_catalogue
from services.routing.models import CaseVersionRow, WorkOrderRow, metadata
from services.routing.provisional import ProvisionalCalendar
from services.routing.store import SqlRoutingUnitOfWork
from services.routing.work_order_rows import encode_order

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
    rows: list[dict[str, object]] = []
    versions: list[dict[str, object]] = []
    with factory() as s:
        for i in range(n):
            versions.append(dict(case_id=f"511102-20260601-{i:06d}", version=3, owner_epoch=1))
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
                s.execute(insert(CaseVersionRow), versions)
                rows, versions = [], []
        if rows:
            s.execute(insert(WorkOrderRow), rows)
            s.execute(insert(CaseVersionRow), versions)
        s.commit()


def _hwm_mib() -> float:
    """The process's resident peak (VmHWM) since the last reset, MiB; NaN where /proc is missing."""
    try:
        with open("/proc/self/status") as status:
            match = re.search(r"VmHWM:\s+(\d+)", status.read())
    except OSError:
        return float("nan")
    return int(match.group(1)) / 1024 if match else float("nan")


def _reset_hwm() -> None:
    """Start a new VmHWM window (Linux: writing 5 to clear_refs resets the peak to the current RSS)."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


@dataclass
class SweepFigures:
    seed_s: float
    warn_s: float
    warn_cpu_s: float
    idle_s: float
    chase_s: float | None
    rss_before_mib: float
    rss_peak_mib: float
    maxrss_mib: float
    traced_s: float | None
    tracemalloc_mib: float | None


def bench_sweep(url: str, n: int, batch: int, *, chase: bool, trace: bool) -> SweepFigures:
    engine = create_engine(url)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    factory = sessionmaker(engine, expire_on_commit=False)
    r = routing()
    start = time.perf_counter()
    seed(factory, r, n)
    seed_s = time.perf_counter() - start
    uow = lambda: SqlRoutingUnitOfWork(factory, node=r.node)  # noqa: E731

    def sweep(now: datetime) -> tuple[float, handlers.SweepReport]:
        start = time.perf_counter()
        report = handlers.run_sweep(uow_factory=uow, routing=r, now=now, batch_size=batch)
        return time.perf_counter() - start, report

    gc.collect()
    rss_before = _hwm_mib()
    _reset_hwm()
    cpu = time.process_time()
    # 1. Every work order past its warning boundary (end of 17 Jun), before its deadline (end of 18 Jun).
    warn_s, report = sweep(datetime(2026, 6, 18, 12, tzinfo=UTC))
    warn_cpu = time.process_time() - cpu
    rss_peak = _hwm_mib()
    assert report.warnings == n, (report.warnings, n)
    # 2. Nothing due any more: the index probe of a normal minute.
    idle_s, report = sweep(datetime(2026, 6, 18, 12, 1, tzinfo=UTC))
    assert report.warnings == report.chases == 0
    chase_s = None
    if chase:
        # 3. Past the deadline: a chase (history, supervision, two events) for every work order.
        chase_s, report = sweep(datetime(2026, 6, 19, 12, tzinfo=UTC))
        assert report.chases == n, (report.chases, n)
    traced_s = traced_peak = None
    if trace:
        # 4. Past the deadline (or the supervision boundary), under tracemalloc: several times slower.
        tracemalloc.start()
        traced_s, report = sweep(datetime(2026, 6, 24, 12, tzinfo=UTC))
        traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        assert report.chases + report.supervisions >= n, (report, n)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    metadata.drop_all(engine)
    engine.dispose()
    return SweepFigures(seed_s, warn_s, warn_cpu, idle_s, chase_s, rss_before, rss_peak, maxrss, traced_s, traced_peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--pg", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--decide-seconds", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=1000, help="work orders per sweep transaction")
    parser.add_argument("--no-chase", action="store_true", help="skip the all-chase sweep")
    parser.add_argument("--tracemalloc", action="store_true", help="also run a traced sweep (slow)")
    args = parser.parse_args()
    print(f"jurisdiction decide(): {bench_decisions(args.decide_seconds):,.0f} decisions/s")
    print()
    print(
        "| backend | open work orders | seed s | full sweep s | orders/s | sweep CPU s | idle sweep s "
        "| chase sweep s | RSS before MiB | RSS peak in sweep MiB | ru_maxrss MiB | traced sweep s "
        "| tracemalloc peak MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{Path(tmp) / 'bench.db'}" if backend == "sqlite" else args.pg
            if backend != "sqlite":
                with create_engine(url).connect() as c:
                    c.execute(text("select 1"))
            f = bench_sweep(url, args.n, args.batch, chase=not args.no_chase, trace=args.tracemalloc)
            chased = "-" if f.chase_s is None else f"{f.chase_s:.1f}"
            traced = "-" if f.traced_s is None else f"{f.traced_s:.1f}"
            peak = "-" if f.tracemalloc_mib is None else f"{f.tracemalloc_mib:.1f}"
            print(
                f"| {backend} | {args.n:,} | {f.seed_s:.1f} | {f.warn_s:.1f} | {args.n / f.warn_s:,.0f} "
                f"| {f.warn_cpu_s:.1f} | {f.idle_s:.3f} | {chased} | {f.rss_before_mib:.0f} "
                f"| {f.rss_peak_mib:.0f} | {f.maxrss_mib:.0f} | {traced} | {peak} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
