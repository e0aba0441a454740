"""The warehouse's upkeep, run by timers: rolling facts forward in the rollups as their windows close,
keeping the planner's statistics fresh, and the open-work gauges.
"""

from __future__ import annotations

from datetime import datetime

from prometheus_client import Gauge
from sqlalchemy.orm import Session, sessionmaker

from services.common.db import transaction
from services.common.regions import RegionTree
from services.stats.store import SqlWarehouse

# Region codes only as labels: never anything personal (DESIGN §6).
WORK_ORDERS_OPEN = Gauge(
    "lianxin_work_orders_open", "Open cases (not closed, withdrawn, merged or refused)", ["region"]
)
WORK_ORDERS_OVERDUE = Gauge(
    "lianxin_work_orders_overdue", "Open cases past their handling deadline without a reply", ["region"]
)
SUPERVISIONS_ACTIVE = Gauge("lianxin_supervisions_active", "Open cases under supervision (督办)", ["region"])


def roll_forward(session_factory: sessionmaker[Session], as_of: datetime, batch: int = 5000) -> int:
    """Re-count in the rollups the facts whose deadline or rating window closed since they were
    rolled, in batches of ``batch`` (one transaction each). Queries are exact without it; it keeps
    the set of facts they correct with small. Returns the facts rolled."""
    total = 0
    while True:
        with transaction(session_factory) as session:
            done = SqlWarehouse(session).roll_forward(as_of=as_of, limit=batch)
        total += done
        if done < batch:
            return total


def maintain(session_factory: sessionmaker[Session], as_of: datetime) -> int:
    """The ``stats-rollup`` timer: roll the stale facts forward, then ANALYZE the warehouse tables
    that changed much since their last ANALYZE (plans stay right without autovacuum, and on
    SQLite, which never analyses by itself). Returns the facts rolled."""
    rolled = roll_forward(session_factory, as_of)
    with transaction(session_factory) as session:
        SqlWarehouse(session).refresh_planner_statistics()
    return rolled


def refresh_gauges(
    session_factory: sessionmaker[Session], regions: RegionTree, node: str, as_of: datetime
) -> dict[str, tuple[int, int, int]]:
    with session_factory() as session:
        counts = SqlWarehouse(session).open_work(tier=regions.get(node).tier, region_code=node, as_of=as_of)
    # The node's own series exist from the first refresh, at 0 with no open case, so that rate() and
    # delta() over them work from the start.
    for region, (open_count, overdue, supervised) in {node: (0, 0, 0), **counts}.items():
        label = region or node
        WORK_ORDERS_OPEN.labels(label).set(open_count)
        WORK_ORDERS_OVERDUE.labels(label).set(overdue)
        SUPERVISIONS_ACTIVE.labels(label).set(supervised)
    return counts
