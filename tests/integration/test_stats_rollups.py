"""The derived tables give the same figures as the facts they sum, on SQLite and PostgreSQL.

A randomised synthetic warehouse (bulk-generated facts whose deadlines and rating windows are
still open when they are rolled) is queried from the rollups and from the facts for every counter,
several regions, months, groupings and moments (before, between and after the windows); the
Python form of the metric definitions must agree with the SQL form on every fact; hotspot counts
from the daily table must equal counts of the facts for windows that cut days anywhere. Then
the fixture's events are replayed twice, shuffled (also in parallel on PostgreSQL), and every
derived table must equal a rebuild from the facts (no drift).
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lianxin.events.v1 import events_pb2
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from bench.stats.generate import bulk_insert, generate
from services.common.db import make_engine, make_session_factory, transaction
from services.common.inbox import consume_batch
from services.common.migrations import upgrade
from services.common.regions import RegionTree, Tier
from services.stats.domain import COUNTERS, Aggregates, StatsConfig, counters
from services.stats.models import CaseFactRow, daily_counts, region_rollups, rollup_days_over, rollups
from services.stats.ports import Slice
from services.stats.store import SqlWarehouse
from services.stats.store_sql import FACT_COLUMNS, counter_terms, fact_of
from services.stats.upkeep import roll_forward
from tests.support.warehouse import Warehouse, fixture_events

MONTHS = ["2026-08", "2026-09", "2026-10"]


def _plain(groups: dict[str, Aggregates]) -> dict[str, tuple[tuple[int, ...], dict[int, int]]]:
    return {k: (tuple(getattr(a, c) for c in COUNTERS), dict(a.reply_days)) for k, a in groups.items()}


def _compare(session: Session, tree: RegionTree, as_of: datetime, rng: random.Random) -> int:
    """Rollup answers == fact answers for a sample of slices; returns how many were compared."""
    store = SqlWarehouse(session)
    cities = tree.children["511100"]
    counties = [c for city in cities for c in tree.children.get(city, [])] or cities
    compared = 0
    for region in ["511100", rng.choice(cities), *rng.sample(counties, 2)]:
        tier = tree.get(region).tier
        for month in MONTHS:
            slices = [
                (Slice(region, tier, months=(month,)), (None, "unit", "child")),
                (Slice(region, tier, months=(month,), channel="hotline"), (None, "category")),
                (Slice(region, tier, months=tuple(MONTHS), category="环境保护"), ("channel",)),
            ]
            for where, groupings in slices:
                for group_by in groupings:
                    if group_by == "child" and region in counties:
                        continue
                    got = store.aggregate_rollups(where, as_of=as_of, group_by=group_by)
                    assert got is not None, "a handful of facts to correct: the rollups answer"
                    want = store.aggregate_facts(where, as_of=as_of, group_by=group_by)
                    assert _plain(got) == _plain(want), (region, month, where, group_by, as_of)
                    compared += 1
    return compared


def _random_warehouse(database_url: str, tmp_path: Path, rolled: datetime) -> tuple[RegionTree, Engine]:
    url = database_url if not database_url.startswith("sqlite") else f"sqlite:///{tmp_path / 'stats.db'}"
    engine = make_engine(url, service="stats")
    upgrade(engine, "stats")
    tree = RegionTree.load()
    bulk_insert(
        engine, generate(3000, tree=tree, root="511100", months=MONTHS, config=StatsConfig(), seed=11, rolled_at=rolled)
    )
    return tree, engine


def test_rollups_equal_facts_on_a_random_warehouse(database_url: str, tmp_path: Path) -> None:
    rolled = datetime(2026, 9, 20, tzinfo=UTC)  # many accept/handling/rating windows still open then
    tree, engine = _random_warehouse(database_url, tmp_path, rolled)
    factory = make_session_factory(engine)
    rng = random.Random(5)
    try:
        with factory() as session:
            # Before, between and long after the windows: the rollups corrected by the stale facts;
            # before the rolled moment: corrected by the facts rolled after it (here all of them).
            for as_of in (
                rolled,
                datetime(2026, 10, 10, tzinfo=UTC),
                datetime(2027, 3, 1, tzinfo=UTC),
                datetime(2026, 9, 1, tzinfo=UTC),
            ):
                assert _compare(session, tree, as_of, rng) > 20
        # The timer rolls the stale facts forward; answers stay the same, now without correction.
        moved = roll_forward(factory, datetime(2026, 11, 1, tzinfo=UTC), batch=500)
        assert moved > 200
        with factory() as session:
            assert _compare(session, tree, datetime(2026, 11, 1, tzinfo=UTC), rng) > 20
            assert _compare(session, tree, datetime(2027, 3, 1, tzinfo=UTC), rng) > 20
    finally:
        engine.dispose()


def test_python_and_sql_definitions_agree_on_every_fact(database_url: str, tmp_path: Path) -> None:
    """``domain.counters`` (the ingest path) and ``store_sql.counter_terms`` (queries, rebuilds) per fact."""
    _, engine = _random_warehouse(database_url, tmp_path, datetime(2026, 9, 20, tzinfo=UTC))
    try:
        with Session(engine) as session:
            facts = {r["case_id"]: fact_of(r) for r in session.execute(select(*FACT_COLUMNS)).mappings()}
            assert len(facts) == 3000
            checked = 0
            for as_of in (
                datetime(2026, 8, 15, tzinfo=UTC),
                datetime(2026, 10, 10, tzinfo=UTC),
                datetime(2027, 1, 1, tzinfo=UTC),
            ):
                terms = counter_terms(as_of)  # 1 when a predicate holds; the number of notices for those
                query = select(CaseFactRow.case_id, *[terms[c] for c in COUNTERS])
                hits = [0] * len(COUNTERS)
                for row in session.execute(query):
                    want = tuple(row[1:])
                    assert counters(facts[row[0]], as_of) == want, (row[0], as_of)
                    hits = [h + w for h, w in zip(hits, want, strict=True)]
                    checked += 1
                # Every counter is met by some facts at every moment: the comparison is not vacuous.
                assert all(h > 0 for h in hits), hits
            assert checked == 9000
    finally:
        engine.dispose()


def test_hotspot_counts_from_daily_table_equal_the_facts(database_url: str, tmp_path: Path) -> None:
    tree, engine = _random_warehouse(database_url, tmp_path, datetime(2026, 9, 20, tzinfo=UTC))
    rng = random.Random(9)
    F = CaseFactRow
    try:
        with Session(engine) as session:
            store = SqlWarehouse(session)
            windows = [(timedelta(hours=24), timedelta(days=28)), (timedelta(hours=3), timedelta(days=2))]
            for region in ("511100", "511102"):
                tier = tree.get(region).tier
                column = F.city_code if tier is Tier.CITY else F.county_code
                for window, baseline in windows:
                    # Midnight exactly, and moments cutting days anywhere.
                    ends = [datetime(2026, 10, 20, tzinfo=UTC)]
                    ends += [
                        datetime(2026, 9, 1, tzinfo=UTC) + timedelta(seconds=rng.uniform(0, 60 * 86400))
                        for _ in range(3)
                    ]
                    for end in ends:
                        start = end - window
                        recent, before = store.hotspot_counts(
                            Slice(region, tier), baseline_start=start - baseline, window_start=start, end=end
                        )
                        for got, a, b in ((recent, start, end), (before, start - baseline, start)):
                            query = (
                                select(F.region_code, F.category, func.count())
                                .where(column == region, F.submitted_at >= a, F.submitted_at < b)
                                .group_by(F.region_code, F.category)
                            )
                            want = {(r[0], r[1]): r[2] for r in session.execute(query)}
                            assert got == want, (region, a, b)
                        assert sum(before.values()) > 0
    finally:
        engine.dispose()


def _rollup_rows(session: Session) -> list[set[tuple[object, ...]]]:
    # Rows whose every counter is 0 are what is left when a key's facts moved elsewhere.
    return [
        {tuple(r) for r in session.execute(select(rollups)) if any(r[7:])},
        {tuple(r) for r in session.execute(select(region_rollups)) if any(r[5:])},
        {tuple(r) for r in session.execute(select(rollup_days_over)) if r[-1]},
        {tuple(r) for r in session.execute(select(daily_counts)) if r[-1]},
    ]


def test_replayed_and_shuffled_events_leave_no_drift(database_url: str, tmp_path: Path) -> None:
    w = Warehouse(database_url, tmp_path)
    try:
        events = fixture_events() * 2
        random.Random(3).shuffle(events)
        for env in events:
            w.deliver(env, source="exchange")
        for env in fixture_events():
            w.deliver(env)
        _assert_no_drift_and_the_hand_figures(w)
    finally:
        w.close()


def test_events_folded_in_batches_write_what_one_at_a_time_writes(database_url: str, tmp_path: Path) -> None:
    """A relay hands the warehouse a batch of events in one transaction (several of one case among
    them) and their facts and rollups are written once at its end: the same figures as event by event."""
    w = Warehouse(database_url, tmp_path)
    try:
        events = fixture_events() * 2
        random.Random(5).shuffle(events)
        for start in range(0, len(events), 7):
            chunk = events[start : start + 7]

            def deliver(chunk: list[events_pb2.EventEnvelope] = chunk) -> None:
                for env in chunk:
                    w.deliver(env, source="exchange")

            assert consume_batch(deliver)
        _assert_no_drift_and_the_hand_figures(w)
    finally:
        w.close()


def _assert_no_drift_and_the_hand_figures(w: Warehouse) -> None:
    """Every derived table equals a rebuild from the facts, and the service's answer (read from the
    rollups as of the ingest clock) is the hand-computed one."""
    factory = w.parts.session_factory
    assert factory is not None
    with factory() as session:
        incremental = _rollup_rows(session)
        assert incremental[0] and incremental[1] and incremental[3]
    with transaction(factory) as session:
        SqlWarehouse(session).rebuild_rollups()
    with factory() as session:
        assert _rollup_rows(session) == incremental
    m = w.metrics(region_code="511100", month="2026-10")
    assert (m["reply_rate"].numerator, m["reply_rate"].denominator) == (3, 4)
    assert m["overdue"].numerator == 2 and m["p90_reply_workdays"].value == 16.0
    assert m["supervised"].numerator == 1 and m["satisfaction_rate"].numerator == 2


def test_events_of_one_case_in_parallel_leave_no_drift(postgres_url: str, tmp_path: Path) -> None:
    """Several consumers at once (PostgreSQL): each case's events folded one at a time, rollups exact."""
    w = Warehouse(postgres_url, tmp_path)
    try:
        events = fixture_events()
        random.Random(8).shuffle(events)
        with ThreadPoolExecutor(max_workers=6) as pool:
            list(pool.map(lambda env: w.deliver(env, source="exchange"), events))
        _assert_no_drift_and_the_hand_figures(w)
    finally:
        w.close()
