"""Bytes a node's exchange database grows by per event, measured on a real ``ExchangeStore`` (SQLite).

An origin node appends its own events to the up-log (``record_local_batch``); a receiver stores a
child's event as a replica, on its own up-log and in its outbox (``receive_push``). Both are run with
envelopes of the simulated mix, the database checkpointed and its pages counted per table
(SQLite's ``dbstat``), so the figure includes indexes and page slack. The outbox is counted apart:
published rows can be pruned (``Outbox.prune``), so a year's growth leaves it out.
"""

from __future__ import annotations

import random
import sqlite3
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from services.common.db import make_engine, make_session_factory
from services.common.migrations import upgrade
from services.common.regions import RegionTree
from services.exchange.ports import ENVELOPE, Item
from services.exchange.store import ExchangeStore

from .sizes import envelope


@dataclass(frozen=True)
class StoragePerEvent:
    origin: float  # bytes per own event at the node that made it (up-log)
    receiver: float  # bytes per event a receiver keeps (replica + up-log), outbox left out
    outbox: float  # bytes per event in the receiver's outbox until pruned
    events: int


def _table_bytes(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        try:
            rows = db.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall()
        except sqlite3.OperationalError:  # no dbstat in this SQLite: the whole file
            size = path.stat().st_size
            return {"": size}
    tables: dict[str, int] = {}
    with sqlite3.connect(path) as db:
        owner = dict(db.execute("SELECT name, tbl_name FROM sqlite_master").fetchall())
    for name, size in rows:
        table = owner.get(name, name)
        tables[table] = tables.get(table, 0) + int(size)
    return tables


def measure(mix: Sequence[tuple[str, float]], *, events: int = 3000, seed: int = 1) -> StoragePerEvent:
    """Per-event growth for a mix of (size class, share); a few seconds on SQLite in a temporary directory."""
    rng = random.Random(seed)
    classes = [c for c, _ in mix]
    weights = [w for _, w in mix]
    regions = RegionTree.load()
    with tempfile.TemporaryDirectory(prefix="lianxin-simulate-") as tmp:
        stores: dict[str, tuple[ExchangeStore, Path]] = {}
        for node in ("511102", "511100"):
            path = Path(tmp) / f"{node}.db"
            engine = make_engine(f"sqlite:///{path}", service="exchange")
            upgrade(engine, "exchange")
            store = ExchangeStore(
                make_session_factory(engine), node=node, regions=regions, clock=lambda: datetime.now(UTC)
            )
            stores[node] = (store, path)
        county, county_path = stores["511102"]
        city, city_path = stores["511100"]
        before_county, before_city = _table_bytes(county_path), _table_bytes(city_path)
        bodies = []
        for i in range(events):
            case = f"511102-20261206-{i // 4:06d}"
            env = envelope(rng.choices(classes, weights)[0], case_id=case, node="511102", to_node="511100")
            bodies.append((env, env.SerializeToString()))
        for start in range(0, events, 500):
            county.record_local_batch(bodies[start : start + 500])
        items = county.pending_up(0, events, max_bytes=2**62)
        for start in range(0, len(items), 500):
            city.receive_push("511102", items[start : start + 500])
        assert all(i.kind == ENVELOPE for i in items) and isinstance(items[0], Item)
        after_county, after_city = _table_bytes(county_path), _table_bytes(city_path)

    def grown(after: dict[str, int], before: dict[str, int], *, only: str | None = None, skip: str = "") -> float:
        total = sum(
            size - before.get(name, 0)
            for name, size in after.items()
            if (only is None or name == only) and (not skip or name != skip)
        )
        return total / events

    return StoragePerEvent(
        origin=grown(after_county, before_county, skip="outbox"),
        receiver=grown(after_city, before_city, skip="outbox"),
        outbox=grown(after_city, before_city, only="outbox"),
        events=events,
    )
