"""Monthly rollups give the same figures as the facts they sum, on SQLite and PostgreSQL.

A randomised synthetic warehouse (bulk-generated facts whose deadlines and rating windows are
still open when they are rolled) is queried from the rollups and from the facts for every counter,
several regions, months, groupings and moments; then the fixture's events are replayed twice,
shuffled, and the rollups must equal a rebuild from the facts (no drift).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.db import make_engine, make_session_factory, transaction
from services.common.migrations import upgrade
from services.common.regions import RegionTree
from services.stats.app import roll_forward
from services.stats.domain import COUNTERS, Aggregates, StatsConfig
from services.stats.generate import bulk_insert, generate
from services.stats.handlers import Slice
from services.stats.models import rollup_days_over, rollups
from services.stats.store import SqlWarehouse
from tests.integration.test_stats_warehouse import Warehouse, fixture_events

MONTHS = ["2026-08", "2026-09", "2026-10"]


def _plain(groups: dict[str, Aggregates]) -> dict[str, tuple[tuple[int, ...], dict[int, int]]]:
    return {k: (tuple(getattr(a, c) for c in COUNTERS), dict(a.reply_days)) for k, a in groups.items()}


def _compare(session: Session, tree: RegionTree, as_of: datetime, rng: random.Random) -> int:
    """Rollup answers == fact answers for a sample of slices; returns how many were compared."""
    store = SqlWarehouse(session)
    assert store.rollups_usable(as_of)
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
                    want = store.aggregate_facts(where, as_of=as_of, group_by=group_by)
                    assert _plain(got) == _plain(want), (region, month, where, group_by, as_of)
                    compared += 1
    return compared


def test_rollups_equal_facts_on_a_random_warehouse(database_url: str, tmp_path: Path) -> None:
    url = database_url if not database_url.startswith("sqlite") else f"sqlite:///{tmp_path / 'stats.db'}"
    engine = make_engine(url, service="stats")
    upgrade(engine, "stats")
    tree = RegionTree.load()
    rolled = datetime(2026, 9, 20, tzinfo=UTC)  # many accept/handling/rating windows still open then
    bulk_insert(
        engine, generate(3000, tree=tree, root="511100", months=MONTHS, config=StatsConfig(), seed=11, rolled_at=rolled)
    )
    factory = make_session_factory(engine)
    rng = random.Random(5)
    try:
        with factory() as session:
            # Before, between and long after the windows: the rollups corrected by the stale facts.
            for as_of in (rolled, datetime(2026, 10, 10, tzinfo=UTC), datetime(2027, 3, 1, tzinfo=UTC)):
                assert _compare(session, tree, as_of, rng) > 20
            # Earlier than the rolled moment the rollups cannot answer; the facts do.
            assert not SqlWarehouse(session).rollups_usable(datetime(2026, 9, 1, tzinfo=UTC))
        # The timer rolls the stale facts forward; answers stay the same, now without correction.
        moved = roll_forward(factory, datetime(2026, 11, 1, tzinfo=UTC), batch=500)
        assert moved > 200
        with factory() as session:
            assert _compare(session, tree, datetime(2026, 11, 1, tzinfo=UTC), rng) > 20
            assert _compare(session, tree, datetime(2027, 3, 1, tzinfo=UTC), rng) > 20
    finally:
        engine.dispose()


def _rollup_rows(session: Session) -> tuple[set[tuple[object, ...]], set[tuple[object, ...]]]:
    # Rows whose every counter is 0 are what is left when a key's facts moved elsewhere.
    main = {tuple(r) for r in session.execute(select(rollups)) if any(r[7:])}
    over = {tuple(r) for r in session.execute(select(rollup_days_over)) if r[-1]}
    return main, over


def test_replayed_and_shuffled_events_leave_no_drift(database_url: str, tmp_path: Path) -> None:
    w = Warehouse(database_url, tmp_path)
    try:
        events = fixture_events() * 2
        random.Random(3).shuffle(events)
        for env in events:
            w.deliver(env, source="exchange")
        for env in fixture_events():
            w.deliver(env)
        factory = w.parts.session_factory
        assert factory is not None
        with factory() as session:
            incremental = _rollup_rows(session)
            assert incremental[0]
        with transaction(factory) as session:
            SqlWarehouse(session).rebuild_rollups()
        with factory() as session:
            assert _rollup_rows(session) == incremental
        # And the service's answer (read from the rollups as of the ingest clock) is the hand-computed one.
        m = w.metrics(region_code="511100", month="2026-10")
        assert (m["reply_rate"].numerator, m["reply_rate"].denominator) == (3, 4)
        assert m["overdue"].numerator == 2 and m["p90_reply_workdays"].value == 16.0
    finally:
        w.close()
