"""The CPU of the exchange's steps of a case, one at a time in this thread, at Sichuan's rate (where
nothing batches: a county's event is a relay pass and a push of its own): a county recording one
local event on its up-log, its link reading what is pending and saving the cursor after the push,
and a city storing a child's push of one event and of a case's five (judged, replica, up-log,
epochs, outbox, cursor; the commit included). Thread CPU per step and the statements SQLite ran
(its trace callback: COMMIT included, an executemany once per row).

    .venv/bin/python -m bench.exchange.steps
    .venv/bin/python -m bench.exchange.steps --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
    .venv/bin/python -m bench.exchange.steps --profile receive_1     # cProfile of one step
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from lianxin.events.v1 import events_pb2
from sqlalchemy import Engine, event, text

from services.common.db import make_engine, make_session_factory
from services.common.migrations import upgrade
from services.common.regions import RegionTree
from services.exchange.ports import Item
from services.exchange.store import ExchangeStore

CITY, COUNTY = "511100", "511102"
SCHEMA = "bench_exchange_steps"
# A case's five events as a county emits them.
CASE_EVENTS = (
    "case_registered",
    "work_order_created",
    "work_order_changed",
    "work_order_changed",
    "progress_notice_settled",
)


def _envelope(case_id: str, number: int, kind: str) -> events_pb2.EventEnvelope:
    env = events_pb2.EventEnvelope(
        event_id=str(uuid.uuid4()),
        case_id=case_id,
        version=number,
        owner_node=COUNTY,
        owner_epoch=1,
        origin_node=COUNTY,
        origin_service="intake",
    )
    getattr(env, kind).SetInParent()
    return env


class Statements:
    """Statements SQLite ran on an engine's connections, COMMIT included (sqlite3's trace callback, so
    the ones sent on the DB-API cursor count too); PostgreSQL: not counted."""

    def __init__(self, engine: Engine) -> None:
        self.count = 0

        def counted(_: str) -> None:
            self.count += 1

        def traced(dbapi_conn: Any, _record: Any) -> None:
            if hasattr(dbapi_conn, "set_trace_callback"):
                dbapi_conn.set_trace_callback(counted)

        event.listen(engine, "connect", traced)


def _store(url: str, node: str, schema: str | None) -> tuple[ExchangeStore, Statements]:
    engine = make_engine(url, service="exchange", schema=schema)
    engine.dispose()  # every connection is made again, with the statement counter
    statements = Statements(engine)
    upgrade(engine, "exchange")
    store = ExchangeStore(
        make_session_factory(engine), node=node, regions=RegionTree.load(), clock=lambda: datetime.now(UTC)
    )
    return store, statements


class Steps:
    """Thread CPU and statements per named step, summed over its runs (cProfile of one step on request)."""

    def __init__(self, statements: Statements, profile: str) -> None:
        self._statements = statements
        self._profile = profile
        self._profiler = cProfile.Profile()
        self._profiled = False
        self.cpu: dict[str, float] = {}
        self.ran: dict[str, int] = {}
        self.counted: dict[str, int] = {}

    def run(self, name: str, step: Callable[[], Any]) -> Any:
        profiled = bool(self._profile) and name.startswith(self._profile)
        before, start = self._statements.count, time.thread_time()
        if profiled:
            self._profiled = True
            self._profiler.enable()
        try:
            return step()
        finally:
            if profiled:
                self._profiler.disable()
            self.cpu[name] = self.cpu.get(name, 0.0) + time.thread_time() - start
            self.ran[name] = self.ran.get(name, 0) + 1
            self.counted[name] = self.counted.get(name, 0) + self._statements.count - before

    def report(self) -> None:
        for name, cpu in self.cpu.items():
            runs = self.ran[name]
            print(f"{name:30s} {cpu * 1000 / runs:7.3f} ms  {self.counted[name] / runs:5.1f} statements  ({runs} runs)")
        if self._profiled:
            pstats.Stats(self._profiler).sort_stats("tottime").print_stats(45)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--database-url", default=None, help="PostgreSQL: a schema per node is made and dropped")
    parser.add_argument("--profile", default="", help="a step's name: its cProfile is printed")
    options = parser.parse_args()
    postgres = options.database_url
    with tempfile.TemporaryDirectory() as data:
        try:
            _run(options, {node: postgres or f"sqlite:///{data}/{node}-exchange.db" for node in (CITY, COUNTY)})
        finally:
            if postgres:
                admin = make_engine(postgres, service="exchange")
                with admin.begin() as conn:
                    for node in (CITY, COUNTY):
                        conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA}_{node} CASCADE"))
                admin.dispose()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def _run(options: argparse.Namespace, urls: dict[str, str]) -> None:
    schema = (lambda node: f"{SCHEMA}_{node}") if options.database_url else (lambda node: None)
    county, county_sql = _store(urls[COUNTY], COUNTY, schema(COUNTY))
    city, city_sql = _store(urls[CITY], CITY, schema(CITY))
    cases = [
        [_envelope(f"{COUNTY}-20261206-{c:06d}", n + 1, kind) for n, kind in enumerate(CASE_EVENTS)]
        for c in range(options.cases)
    ]
    # The county: each event its own relay pass (its own transaction), then its link reads what is
    # pending (that event) and saves the cursor after the push, as at Sichuan's rate.
    at_county = Steps(county_sql, options.profile)
    acked = 0
    for env in (env for case in cases for env in case):
        body = env.SerializeToString()
        at_county.run("county record_local (1 event)", partial(county.record_local, env, body))
        items = at_county.run("county pending_up (1 event)", partial(county.pending_up, acked, 500))
        acked = items[-1].position
        at_county.run("county save_cursor", partial(county.save_cursor, CITY, "up", position=acked))
    at_county.report()
    # The city: what the county pushed, one event a push (Sichuan's rate), then a case's five in one.
    pending = county.pending_up(0, 10**6)
    by_case: dict[str, list[Item]] = {}
    for item in pending:
        by_case.setdefault(events_pb2.EventEnvelope.FromString(item.body).case_id, []).append(item)
    half = options.cases // 2
    at_city = Steps(city_sql, options.profile)
    for case_items in list(by_case.values())[:half]:
        for item in case_items:
            at_city.run("city receive_push (1 event)", partial(city.receive_push, COUNTY, [item]))
    for case_items in list(by_case.values())[half:]:
        at_city.run("city receive_push (a case, 5)", partial(city.receive_push, COUNTY, case_items))
    at_city.report()
    assert city.head_up() == len(pending), (city.head_up(), len(pending))


if __name__ == "__main__":
    main()
