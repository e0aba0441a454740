"""Warehouse benchmark: event ingestion rate, and the latency of every statistics query over N generated cases.

    .venv/bin/python -m bench.stats.bench_warehouse                 # 200k cases, SQLite and PostgreSQL
    .venv/bin/python -m bench.stats.bench_warehouse --cases 1000000 --backends sqlite,postgres
    .venv/bin/python -m bench.stats.bench_warehouse --cases 10000000 --backends postgres
    .venv/bin/python -m bench.stats.bench_warehouse --cases 10000000 --backends sqlite --workdir /var/tmp
    .venv/bin/python -m bench.stats.bench_warehouse --cases 1000 --queries 5 --ingest-batch 50   # ingestion in batches

Cases are spread over ``--months`` statistical months and all 183 counties of 四川省 (510000).
Ingestion: full events (registration, work order, accept, reply, close, rating) through the real
ingest function, one transaction per event as on the bus (``--ingest-batch 50``: a relay's batches
in one transaction each, as an embedded node's relay hands them); events/s and CPU per event.
Load: facts generated column-wise (numpy), COPY (PostgreSQL) or executemany in one transaction per
200k rows (SQLite), secondary indexes built after, the derived tables rebuilt set-based, then
``VACUUM ANALYZE`` / ``ANALYZE`` (what autovacuum, or the service's stats-rollup timer, does in
production) and one roll-forward of the facts whose windows closed during the load (the timer's
other job). Queries go through the same handler functions as the RPCs (no gRPC): metrics of one
region and one statistical month (GetMetrics), rankings of child regions and of units with the
previous month (RankRegions, RankUnits), hotspots with a 24 h window and 28 days of baseline at a
random moment (ListHotspots), the bulletin's aggregates (total, previous month, by category, by
channel, by child region), drill-down case ids (3 metrics, up to 10,000 ids each). The baseline,
measured in the same run: the province-month metrics computed from the facts (an index range over
every case of the month), as before the rollups.
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from bench.stats import synthetic as syn
from bench.stats.generate import bulk_insert, generate
from services.common.calendar import ChineseWorkingCalendar
from services.common.db import make_engine, make_session_factory
from services.common.inbox import consume_batch
from services.common.migrations import upgrade
from services.common.regions import RegionTree, Tier
from services.common.service import BusEvent
from services.common.timeutil import CHINA
from services.stats import handlers
from services.stats.consumers import make_ingestor
from services.stats.domain import DEFINITIONS, StatsConfig, month_bounds, month_name, shift_month
from services.stats.hotspot import HotspotRules, keywords
from services.stats.ports import Slice
from services.stats.store import SqlWarehouse
from services.stats.upkeep import roll_forward

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
ROOT = "510000"
METRICS = sorted(DEFINITIONS)


def _say(line: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


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


def _remove_sqlite(url: str) -> None:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)


@dataclass
class IngestRun:
    events_per_s: float
    cpu_ms_per_event: float


def bench_ingest(url: str, events: int, tree: RegionTree, batch: int = 1) -> IngestRun:
    """Events per second through the ingest function: one transaction per event, as on the production
    bus, or ``batch`` events in one as an embedded node's relay hands them (``consume_batch``)."""
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
    cpu = time.process_time()
    started = time.perf_counter()
    for start in range(0, len(bus_events), batch):
        chunk = bus_events[start : start + batch]
        if len(chunk) == 1:
            ingest(chunk[0])
        elif not consume_batch(functools.partial(_ingest_all, ingest, chunk)):
            raise RuntimeError("a batch of events failed to commit")
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    engine.dispose()
    return IngestRun(len(bus_events) / elapsed, cpu * 1000 / len(bus_events))


def _ingest_all(ingest: Callable[[BusEvent], bool], events: list[BusEvent]) -> None:
    for event in events:
        ingest(event)


@dataclass
class QueryRun:
    load_s: float
    per_month: int  # cases in the busiest province-month
    latency: dict[str, tuple[float, float, int]] = field(default_factory=dict)  # kind → (p50 ms, p99 ms, n)


def load(engine: Engine, *, cases: int, months: list[str], tree: RegionTree, seed: int) -> float:
    """Generate and load the facts, build the derived tables, refresh planner statistics."""
    started = time.perf_counter()
    _say(f"loading {cases:,} facts ({engine.dialect.name})")
    chunks = generate(cases, tree=tree, root=ROOT, months=months, config=StatsConfig(), seed=seed)
    bulk_insert(engine, chunks, defer_indexes=True, progress=_say)
    step = time.perf_counter()
    if engine.dialect.name == "postgresql":
        # The visibility map (index-only scans) and the planner statistics of every table, as
        # autovacuum would leave them; the service's stats-rollup timer ANALYZEs if it is off.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM (ANALYZE)")
    else:
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
    _say(f"vacuum/analyze: {time.perf_counter() - step:.0f} s")
    return time.perf_counter() - started


def bench_queries(
    url: str,
    *,
    cases: int,
    months: list[str],
    queries: int,
    tree: RegionTree,
    seed: int,
    loaded: bool = False,
    slow_queries: int = 5,
) -> QueryRun:
    engine = make_engine(url, service="stats")
    upgrade(engine, "stats")
    load_s = 0.0 if loaded else load(engine, cases=cases, months=months, tree=tree, seed=seed)
    factory = make_session_factory(engine)
    rolled = roll_forward(factory, datetime.now(UTC))
    _say(f"rolled forward {rolled:,} facts whose windows closed during the load")
    rng = random.Random(seed)
    cities = [c for c in tree.children[ROOT] if tree.children.get(c)]
    counties = [c for c in tree.subtree(ROOT) if tree.get(c).tier is Tier.COUNTY]
    config = StatsConfig()
    first, _ = month_bounds(months[0], config)
    _, last = month_bounds(months[-1], config)
    rules = HotspotRules()
    keywords(["预热 jieba 的词典"], 1)  # loaded once per process, on the first hotspot found: not a query's cost

    def month() -> str:
        return rng.choice(months[1:] or months)

    def metrics(region: str, *, ids: bool = False) -> Callable[[Session], object]:
        where = Slice(region, tree.get(region).tier, months=(month(),))
        names = ["received", "overdue", "satisfaction_rate"] if ids else []
        return lambda s: handlers.get_metrics(
            SqlWarehouse(s), where, names=names, as_of=datetime.now(UTC), with_ids=ids
        )

    def rank_regions(parent: str) -> Callable[[Session], object]:
        metric, m = rng.choice(METRICS), month()
        return lambda s: handlers.rank_regions(
            SqlWarehouse(s), tree, ROOT, parent_region_code=parent, metric=metric, month=m, year="",
            min_cases=10, as_of=datetime.now(UTC),
        )  # fmt: skip

    def rank_units(region: str) -> Callable[[Session], object]:
        metric, m = rng.choice(METRICS), month()
        return lambda s: handlers.rank_units(
            SqlWarehouse(s), tree, ROOT, region_code=region, metric=metric, month=m, year="",
            min_cases=10, as_of=datetime.now(UTC),
        )  # fmt: skip

    def hotspots(region: str) -> Callable[[Session], object]:
        # A random moment with a whole baseline before it.
        span = (last - first - rules.baseline - rules.window).total_seconds()
        as_of = first + rules.baseline + rules.window + timedelta(seconds=rng.uniform(0, span))
        return lambda s: handlers.hotspots(SqlWarehouse(s), tree, ROOT, region_code=region, as_of=as_of, rules=rules)

    def bulletin(region: str) -> Callable[[Session], object]:
        tier, m = tree.get(region).tier, month()

        def run(s: Session) -> object:
            store, now = SqlWarehouse(s), datetime.now(UTC)
            where = Slice(region, tier, months=(m,))
            for group in (None, "category", "channel", "child"):
                store.aggregate(where, as_of=now, group_by=group)
            return store.aggregate(Slice(region, tier, months=(shift_month(m, -1),)), as_of=now, group_by=None)

        return run

    def facts(region: str) -> Callable[[Session], object]:
        where = Slice(region, tree.get(region).tier, months=(month(),))
        return lambda s: SqlWarehouse(s).aggregate_facts(where, as_of=datetime.now(UTC), group_by=None)

    kinds: list[tuple[str, Callable[[], Callable[[Session], object]], int]] = [
        ("metrics province", lambda: metrics(ROOT), queries),
        ("metrics city", lambda: metrics(rng.choice(cities)), queries),
        ("metrics county", lambda: metrics(rng.choice(counties)), queries),
        ("rank regions province", lambda: rank_regions(ROOT), queries),
        ("rank regions city", lambda: rank_regions(rng.choice(cities)), queries),
        ("rank units province", lambda: rank_units(ROOT), queries),
        ("rank units city", lambda: rank_units(rng.choice(cities)), queries),
        ("hotspots province", lambda: hotspots(ROOT), queries),
        ("hotspots county", lambda: hotspots(rng.choice(counties)), queries),
        ("bulletin data province", lambda: bulletin(ROOT), queries),
        ("bulletin data city", lambda: bulletin(rng.choice(cities)), queries),
        ("drill-down county", lambda: metrics(rng.choice(counties), ids=True), queries),
        ("drill-down province", lambda: metrics(ROOT, ids=True), slow_queries),
        ("baseline: facts province", lambda: facts(ROOT), slow_queries),
    ]
    out = QueryRun(load_s=load_s, per_month=0)
    for label, make, count in kinds:
        latencies: list[float] = []
        for i in range(count + 2):
            query = make()
            with factory() as session:
                t0 = time.perf_counter()
                query(session)
                dt = time.perf_counter() - t0
            if i >= 2:  # the first ones warm the cache and the connection pool
                latencies.append(dt * 1000)
        out.latency[label] = (statistics.median(latencies), _pct(latencies, 0.99), len(latencies))
        _say(f"{label}: p50 {out.latency[label][0]:.1f} ms, p99 {out.latency[label][1]:.1f} ms")
    with factory() as session:
        store = SqlWarehouse(session)
        for m in months:
            got = store.aggregate(Slice(ROOT, Tier.PROVINCE, months=(m,)), as_of=datetime.now(UTC), group_by=None)
            out.per_month = max(out.per_month, got[""].received)
    engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=200_000)
    parser.add_argument("--months", type=int, default=24, help="statistical months the cases spread over")
    parser.add_argument("--queries", type=int, default=50, help="queries per kind (5 for the slow kinds)")
    parser.add_argument("--events", type=int, default=3000, help="events for the ingestion rate (0: skip)")
    parser.add_argument(
        "--ingest-batch",
        type=int,
        default=1,
        help="events per transaction while ingesting (a relay's batch; 1: one each)",
    )
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--workdir", default=None, help="where SQLite files go (default: a temp dir)")
    parser.add_argument("--database-url", default=None, help="query an already loaded warehouse (one backend)")
    parser.add_argument("--keep", action="store_true", help="keep the loaded warehouse (prints its URL)")
    args = parser.parse_args()
    tree = RegionTree.load()
    months = [shift_month(month_name(2026, 10), -i) for i in reversed(range(args.months))]
    runs: list[tuple[str, IngestRun, QueryRun]] = []
    with tempfile.TemporaryDirectory(prefix="lianxin-bench-") as tmp:
        workdir = Path(args.workdir or tmp)
        backends = ["postgres" if args.database_url.startswith("postgresql") else "sqlite"] if args.database_url else []
        for backend in backends or args.backends.split(","):
            ingest = IngestRun(0.0, 0.0)
            url, name = _database(backend, workdir) if args.events else ("", None)
            try:
                if args.events:
                    _say(f"{backend}: ingesting {args.events:,} events")
                    ingest = bench_ingest(url, args.events, tree, args.ingest_batch)
            finally:
                _drop(name)
                _remove_sqlite(url)
            url, name = (args.database_url, None) if args.database_url else _database(backend, workdir)
            try:
                run = bench_queries(
                    url, cases=args.cases, months=months, queries=args.queries, tree=tree, seed=7,
                    loaded=bool(args.database_url),
                )  # fmt: skip
            finally:
                if args.keep or args.database_url:
                    _say(f"kept: {url}")
                else:
                    _drop(name)
                    _remove_sqlite(url)
            runs.append((backend, ingest, run))
    print(f"\nstats warehouse: {args.cases:,} cases over {args.months} months; {args.queries} queries per kind")
    print(f"{'backend':<9} {'ingest ev/s':>11} {'CPU ms/ev':>9} {'load s':>8} {'rows/s':>9} {'busiest prov-month':>18}")
    for backend, ingest, run in runs:
        rate = f"{args.cases / run.load_s:>9,.0f}" if run.load_s else f"{'-':>9}"
        print(
            f"{backend:<9} {ingest.events_per_s:>11,.0f} {ingest.cpu_ms_per_event:>9.2f} {run.load_s:>8.0f} "
            f"{rate} {run.per_month:>18,}"
        )
    print(f"\n{'query':<26}" + "".join(f" {b + ' p50/p99 ms':>24} {'n':>3} {'vs base':>7}" for b, _, _ in runs))
    for label in runs[0][2].latency:
        cells = ""
        for _, _, run in runs:
            p50, p99, n = run.latency[label]
            base = run.latency["baseline: facts province"][0]
            cells += f" {f'{p50:.1f} / {p99:.1f}':>24} {n:>3} {base / p50:>6.0f}x"
        print(f"{label:<26}{cells}")
    print("vs base: the baseline's p50 (province-month metrics from the facts) ÷ this p50, same backend and run")


if __name__ == "__main__":
    main()
