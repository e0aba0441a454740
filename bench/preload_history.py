"""Years of history for the other three services of a node: statistics facts, video visits, exchange logs.

``bench.preload`` fills intake and routing; this fills what the stats drill-down, the video visit
list and booking, and the exchange link read per request (issue 20), on a city node whose child
pushes to it and pulls from it:

- stats: ``stored`` case facts over four years of the node's subtree (``services.stats.generate``,
  COPY or executemany), the rollups rebuilt from them;
- video: one leader's past receptions (``stored // 10``, six a working day back from yesterday)
  in the leader's room, each visit with its two reservations, and as many of three other leaders;
- exchange: ``stored`` events in the up-log (the subtree's, as pushed up), the same events as the
  child's replicas, ``stored // 20`` hand-offs queued down to the child and all of them acknowledged,
  and the link cursors where a running link leaves them.

    .venv/bin/python -m bench.preload_history --stored 100000 --data-dir /tmp/n   # SQLite files of node 511100
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from lianxin.events.v1 import events_pb2
from sqlalchemy import Engine, insert, text

from bench.preload import analyze_tables
from bench.stats import synthetic
from bench.stats.generate import bulk_insert, generate
from services.common.db import make_engine, service_database_url
from services.common.migrations import upgrade
from services.common.regions import RegionTree
from services.common.settings import Settings
from services.common.timeutil import CHINA
from services.exchange import models as exchange_models
from services.stats.domain import StatsConfig, shift_month, stat_month_of
from services.video import models as video_models

CITY = "511100"
CHILD = "511102"
LEADER = "leader-history"
CHUNK = 20_000
VISITS_PER_DAY = 6  # 09:00 to 12:00, half an hour each
OTHER_LEADERS = 3  # each with as many past visits as LEADER, in rooms of their own


@dataclass
class History:
    """What a benchmark or test needs to know about the preloaded history."""

    stored: int
    seconds: float
    child: str = CHILD
    leader: str = LEADER
    room: str = ""
    visits: int = 0
    visit_cases: list[str] = field(default_factory=list)  # cases with a past visit
    replica_cases: list[str] = field(default_factory=list)  # cases whose events the child pushed
    child_up: int = 0  # the child's up-log position this node holds
    down_head: int = 0  # the last position queued down to the child (all acknowledged)
    units: list[str] = field(default_factory=list)  # units with facts in the current month


def _insert(engine: Engine, table: Any, rows: Iterator[dict[str, Any]]) -> int:
    """Rows in chunks of CHUNK, one transaction each (executemany; PostgreSQL's insertmanyvalues)."""
    done = 0
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == CHUNK:
            with engine.begin() as conn:
                conn.execute(insert(table), chunk)
            done, chunk = done + len(chunk), []
    if chunk:
        with engine.begin() as conn:
            conn.execute(insert(table), chunk)
        done += len(chunk)
    return done


def _stats(engine: Engine, tree: RegionTree, node: str, stored: int, now: datetime, span: int) -> list[str]:
    config = StatsConfig()
    this_month = stat_month_of(now, config)
    months = [shift_month(this_month, -k) for k in range(span - 1, -1, -1)]
    bulk_insert(engine, generate(stored, tree=tree, root=node, months=months, config=config, seed=20))
    analyze_tables(engine, ("case_facts",))
    with engine.connect() as conn:
        found = conn.execute(
            text("SELECT unit_id FROM case_facts WHERE stat_month = :m GROUP BY unit_id ORDER BY count(*) DESC"),
            {"m": months[-2]},
        )
        return [str(u) for (u,) in found]


def _video(engine: Engine, node: str, stored: int, now: datetime) -> tuple[str, int, list[str]]:
    room = f"{node}-R-history"
    visits = stored // 10
    day = now.astimezone(CHINA).date() - timedelta(days=1)
    moments: list[datetime] = []
    while len(moments) < visits:
        if day.weekday() < 5:
            for k in range(VISITS_PER_DAY):
                start = datetime(day.year, day.month, day.day, 9, tzinfo=CHINA) + timedelta(minutes=30 * k)
                moments.append(start.astimezone(UTC))
        day -= timedelta(days=1)
    moments = sorted(moments[:visits])
    with engine.begin() as conn:
        conn.execute(insert(video_models.RoomRow), [{"room_id": room, "node": node, "name": "接访室"}])
    cases = [f"{CHILD}-{m.astimezone(CHINA):%Y%m%d}-{9_000_000 + n:07d}" for n, m in enumerate(moments)]

    def visit_rows() -> Iterator[dict[str, Any]]:
        for n, (start, case_id) in enumerate(
            zip(moments * (1 + OTHER_LEADERS), cases * (1 + OTHER_LEADERS), strict=True)
        ):
            leader = LEADER if n < visits else f"{LEADER}-{n // visits}"
            yield {
                "visit_id": f"v-history-{n:08d}",
                "case_id": case_id if n < visits else f"{case_id[:-7]}{n:07d}",
                "leader_id": leader,
                "room_ids": [room],
                "unit_ids": [],
                "starts_at": start,
                "ends_at": start + timedelta(minutes=30),
                "session_start": start.replace(hour=1, minute=0),  # 09:00 in China
                "state": "COMPLETED",
                "version": 3,
                "representatives": None,
                "checked_in_at": start,
                "minutes": "",
                "decisions": "",
                "recording_ref": "",
                "hold_ids": [],
                "created_at": start - timedelta(days=7),
            }

    def reservation_rows() -> Iterator[dict[str, Any]]:
        for n, start in enumerate(moments * (1 + OTHER_LEADERS)):
            leader = LEADER if n < visits else f"{LEADER}-{n // visits}"
            for resource in (f"leader:{leader}", f"room:{room}-{n // visits}" if n >= visits else f"room:{room}"):
                yield {
                    "resource_id": resource,
                    "starts_at": start,
                    "ends_at": start + timedelta(minutes=30),
                    "owner": f"visit:v-history-{n:08d}",
                    "version": 1,
                }

    _insert(engine, video_models.VisitRow, visit_rows())
    _insert(engine, video_models.ReservationRow, reservation_rows())
    analyze_tables(engine, ("video_visits", "video_reservations"))
    return room, visits, cases[-50:]


def _exchange(engine: Engine, node: str, stored: int, now: datetime) -> tuple[int, int, list[str]]:
    start = now - timedelta(days=4 * 365)
    step = (now - timedelta(days=1) - start) / max(1, stored)
    template = synthetic.registered(f"{CHILD}-20240101-000000001", region=CHILD, at=start)
    cases = [f"{CHILD}-{(start + step * n).astimezone(CHINA):%Y%m%d}-{n + 1:09d}" for n in range(stored)]

    def body(n: int) -> bytes:
        env = events_pb2.EventEnvelope()
        env.CopyFrom(template)
        env.case_id = cases[n]
        env.event_id = f"ev-history-{n:012d}"
        env.case_registered.case.case_id = cases[n]
        return env.SerializeToString()

    def up_rows() -> Iterator[dict[str, Any]]:
        for n in range(stored):
            yield {
                "event_id": f"ev-history-{n:012d}",
                "case_id": cases[n],
                "case_sequence": 1,
                "version": 1,
                "event_type": "case_registered",
                "origin_node": CHILD,
                "body": body(n),
                "created_at": start + step * n,
                "kind": "envelope",
            }

    def replica_rows() -> Iterator[dict[str, Any]]:
        for n in range(stored):
            yield {
                "event_id": f"ev-history-{n:012d}",
                "case_id": cases[n],
                "version": 1,
                "event_type": "case_registered",
                "origin_node": CHILD,
                "owner_node": CHILD,
                "owner_epoch": 1,
                "child_node": CHILD,
                "case_sequence": 1,
                "body": body(n),
                "received_at": start + step * n,
            }

    queued = stored // 20

    def down_rows() -> Iterator[dict[str, Any]]:
        for n in range(queued):
            yield {
                "child_node": CHILD,
                "item_id": f"handoff-history-{n:09d}",
                "kind": "envelope",
                "body": body(n * 20),
                "created_at": start + step * n * 20,
            }

    _insert(engine, exchange_models.up_log, up_rows())
    _insert(engine, exchange_models.replica, replica_rows())
    _insert(engine, exchange_models.down_queue, down_rows())
    with engine.begin() as conn:
        down_head = int(
            conn.execute(
                text("SELECT coalesce(max(position), 0) FROM down_queue WHERE child_node = :c"), {"c": CHILD}
            ).scalar_one()
        )
        conn.execute(
            insert(exchange_models.link_cursor),
            [
                {"peer": CHILD, "kind": "child_up", "position": stored, "token": "", "last_contact": now},
                {"peer": CHILD, "kind": "child_down", "position": down_head, "token": "", "last_contact": now},
            ],
        )
    analyze_tables(engine, ("up_log", "replica", "down_queue"))
    return stored, down_head, cases[-50:]


def preload_history(
    settings: Settings, stored: int, *, facts: int | None = None, months: int = 48, now: datetime | None = None
) -> History:
    """Write the stats, video and exchange history of ``stored`` cases into the node's databases
    (schemas migrated first); the node must not be running. ``facts``: the warehouse's cases
    (default ``stored``), spread over the last ``months`` statistical months."""
    began = time.monotonic()
    now = now or datetime.now(UTC)
    tree = RegionTree.load(settings.regions_file) if settings.regions_file else RegionTree.load()
    engines = {
        name: make_engine(service_database_url(settings, name), service=name) for name in ("stats", "video", "exchange")
    }
    try:
        for name, engine in engines.items():
            upgrade(engine, name)
        units = _stats(engines["stats"], tree, settings.node, stored if facts is None else facts, now, months)
        room, visits, visit_cases = _video(engines["video"], settings.node, stored, now)
        child_up, down_head, replica_cases = _exchange(engines["exchange"], settings.node, stored, now)
    finally:
        for engine in engines.values():
            engine.dispose()
    return History(
        stored=stored,
        seconds=time.monotonic() - began,
        room=room,
        visits=visits,
        visit_cases=visit_cases,
        replica_cases=replica_cases,
        child_up=child_up,
        down_head=down_head,
        units=units,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stored", type=int, default=100_000, help="cases of history (default 100000)")
    parser.add_argument("--node", default=CITY)
    parser.add_argument("--data-dir", default=".lianxin", help="the node's data directory (SQLite files)")
    parser.add_argument("--database-url", default=None, help="PostgreSQL URL instead of SQLite files")
    args = parser.parse_args(argv)
    settings = Settings(node=args.node, data_dir=args.data_dir, database_url=args.database_url)
    done = preload_history(settings, args.stored)
    print(f"history of {done.stored} cases stored in {done.seconds:.1f} s ({done.visits} visits)")


if __name__ == "__main__":
    main()
