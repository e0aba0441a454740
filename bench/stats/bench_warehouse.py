"""Warehouse benchmark: event ingestion rate, and metric query latency over N generated cases.

    .venv/bin/python -m bench.stats.bench_warehouse                 # 200k cases, SQLite and PostgreSQL
    .venv/bin/python -m bench.stats.bench_warehouse --cases 1000000 --backends sqlite,postgres
    .venv/bin/python -m bench.stats.bench_warehouse --cases 10000000 --months 24

Cases are spread over ``--months`` statistical months and all 183 counties of 四川省 (510000).
Queries: every metric (GetMetrics' handler, no drill-down) for one region and one month, at the
province, at a random city and at a random county, ``--queries`` each. Ingestion: full events
(registration, work order, accept, reply, close, rating) through the real ingest function.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, text

from services.common.calendar import ChineseWorkingCalendar
from services.common.db import make_engine, make_session_factory
from services.common.migrations import upgrade
from services.common.regions import RegionTree, Tier
from services.common.timeutil import CHINA
from services.stats import handlers
from services.stats import synthetic as syn
from services.stats.app import make_ingestor
from services.stats.domain import StatsConfig, month_name, shift_month
from services.stats.generate import bulk_insert, generate
from services.stats.store import SqlWarehouse

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _database(backend: str, workdir: Path) -> tuple[str, str | None]:
    if backend == "sqlite":
        return f"sqlite:///{workdir / f'stats-{uuid.uuid4().hex[:6]}.db'}", None
    name = f"lianxin_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}", name


def _drop(name: str | None) -> None:
    if name is None:
        return
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def bench_ingest(url: str, events: int, tree: RegionTree) -> float:
    """Events per second through the ingest function (one transaction per event, as on the bus)."""
    engine = make_engine(url, service="stats")
    upgrade(engine, "stats")
    ingest = make_ingestor(
        session_factory=make_session_factory(engine),
        regions=tree,
        config=StatsConfig(),
        calendar=ChineseWorkingCalendar(),
    )
    base = datetime(2026, 10, 12, 9, tzinfo=CHINA)
    stream = []
    for i in range(events // 6 + 1):
        case_id = f"511102-20261012-{i:06d}"
        at = base + timedelta(minutes=i)
        stream += [
            syn.registered(case_id, region="511102", at=at, title="噪音扰民", body="夜间施工"),
            syn.work_order_created(
                case_id, version=2, at=at, unit_id="511102:城乡建设", deadlines={"settle": at + timedelta(days=20)}
            ),
            syn.work_order_changed(case_id, version=3, at=at + timedelta(days=1), action="accept", to_state="ACCEPTED"),
            syn.work_order_changed(case_id, version=4, at=at + timedelta(days=5), action="reply", to_state="REPLIED"),
            syn.work_order_changed(case_id, version=5, at=at + timedelta(days=6), action="close", to_state="CLOSED"),
            syn.evaluated(case_id, version=6, at=at + timedelta(days=7), rating="satisfied"),
        ]
    bus_events = [syn.bus_event(e) for e in stream[:events]]
    started = time.perf_counter()
    for event in bus_events:
        ingest(event)
    elapsed = time.perf_counter() - started
    engine.dispose()
    return len(bus_events) / elapsed


def bench_queries(
    url: str, *, cases: int, months: list[str], queries: int, tree: RegionTree, seed: int
) -> tuple[float, dict[str, tuple[float, float]], int]:
    engine = make_engine(url, service="stats")
    upgrade(engine, "stats")
    started = time.perf_counter()
    bulk_insert(
        engine,
        generate(cases, tree=tree, root="510000", months=months, config=StatsConfig(), seed=seed),
        defer_indexes=True,
    )
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))  # the facts and the rollups: planners need both
    else:
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
    load_s = time.perf_counter() - started
    factory = make_session_factory(engine)
    rng = random.Random(seed)
    cities = [c for c in tree.children["510000"]]
    counties = [c for c in tree.subtree("510000") if tree.get(c).tier is Tier.COUNTY]
    as_of = datetime.now(UTC)
    results: dict[str, tuple[float, float]] = {}
    per_month = 0
    levels: list[tuple[str, Callable[[], str]]] = [
        ("province", lambda: "510000"),
        ("city", lambda: rng.choice(cities)),
        ("county", lambda: rng.choice(counties)),
    ]
    for label, pick in levels:
        latencies: list[float] = []
        for i in range(queries + 3):
            region = pick()
            where = handlers.Slice(region, tree.get(region).tier, months=(rng.choice(months),))
            with factory() as session:
                t0 = time.perf_counter()
                values = handlers.get_metrics(SqlWarehouse(session), where, names=[], as_of=as_of, with_ids=False)
                dt = time.perf_counter() - t0
            if i >= 3:  # the first few warm the cache and the connection pool
                latencies.append(dt * 1000)
            if label == "province":
                per_month = max(per_month, int(values[0].numerator))
        results[label] = (statistics.median(latencies), _pct(latencies, 0.99))
    engine.dispose()
    return load_s, results, per_month


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=200_000)
    parser.add_argument("--months", type=int, default=24, help="statistical months the cases spread over")
    parser.add_argument("--queries", type=int, default=50, help="queries per level")
    parser.add_argument("--events", type=int, default=3000, help="events for the ingestion rate")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--workdir", default=None, help="where SQLite files go (default: a temp dir)")
    args = parser.parse_args()
    tree = RegionTree.load()
    months = [shift_month(month_name(2026, 10), -i) for i in reversed(range(args.months))]
    rows = []
    with tempfile.TemporaryDirectory(prefix="lianxin-bench-") as tmp:
        workdir = Path(args.workdir or tmp)
        for backend in args.backends.split(","):
            url, name = _database(backend, workdir)
            try:
                rate = bench_ingest(url, args.events, tree)
            finally:
                _drop(name)
            url, name = _database(backend, workdir)
            try:
                load_s, latency, per_month = bench_queries(
                    url, cases=args.cases, months=months, queries=args.queries, tree=tree, seed=7
                )
            finally:
                _drop(name)
            rows.append((backend, rate, load_s, latency, per_month))
    print(f"\nstats warehouse: {args.cases:,} cases over {args.months} months, {args.queries} queries per level")
    print(f"{'backend':<9} {'ingest ev/s':>11} {'load s':>8} {'rows/s':>9} {'prov-month rows':>15} "
          f"{'province p50/p99 ms':>20} {'city p50/p99 ms':>16} {'county p50/p99 ms':>18}")  # fmt: skip
    base = rows[0][3]["province"][1] if rows else 1.0
    for backend, rate, load_s, latency, per_month in rows:
        cells = [f"{latency[k][0]:.1f}/{latency[k][1]:.1f}" for k in ("province", "city", "county")]
        print(
            f"{backend:<9} {rate:>11,.0f} {load_s:>8.1f} {args.cases / load_s:>9,.0f} {per_month:>15,} "
            f"{cells[0]:>20} {cells[1]:>16} {cells[2]:>18}   "
            f"province p99 vs {rows[0][0]}: {latency['province'][1] / base:.2f}x"
        )


if __name__ == "__main__":
    main()
