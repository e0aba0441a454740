"""The CPU of a case's steps at its county, one at a time in this thread: routing placing a new case
(one transaction, commit included, with the statements it ran), intake's SubmitCase in the servicer
(no gRPC), intake following routing's three events of a placement (created, accept, assign; each in
a transaction of its own, as at a county where each event is a relay pass of its own; the three in
one batch; the three folded into one event, as routing publishes a placement now), and the
progress-notice sender's pass after a case is accepted (one notice due: read when the next is due,
claim, read the case, send, settle with its event, read again), and a pass with nothing due.

    .venv/bin/python -m bench.case_steps
    .venv/bin/python -m bench.case_steps --placements 300 --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from lianxin.common.v1 import common_pb2
from lianxin.events.v1 import events_pb2
from sqlalchemy import event, text

from bench.catchup_profile import in_process_settings
from bench.harness.workload import Submissions
from services.common.db import make_engine, make_session_factory
from services.common.events import envelope, folded, to_bus_event
from services.common.inbox import consume_batch
from services.common.regions import RegionTree
from services.common.service import BusEvent
from services.common.timeutil import CHINA
from services.intake.models import ProgressNoticeRow
from services.node import Node
from services.routing import handlers
from services.routing.consumers import registered_case
from services.routing.domain.timelimits import TimeLimitPolicy, TimeRules
from services.routing.handlers import Routing
from services.routing.jurisdiction import load_catalogue
from services.routing.models import metadata
from services.routing.provisional import ProvisionalCalendar
from services.routing.store import SqlRoutingUnitOfWork

COUNTY = "511102"
ACCEPTED, ASSIGNED = common_pb2.CASE_STATE_ACCEPTED, common_pb2.CASE_STATE_ASSIGNED
SCHEMA = "bench_case_steps"


class SubmitContext:
    """The few ServicerContext calls SubmitCase makes when it succeeds."""

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def set_trailing_metadata(self, *_: object) -> None:
        return None


def placement(database_url: str, count: int) -> None:
    if database_url.startswith("postgresql"):
        with make_engine(database_url, service="routing", schema=SCHEMA).begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{SCHEMA}" CASCADE'))  # a fresh schema: every case new
    engine = make_engine(database_url, service="routing", schema=SCHEMA)
    metadata.create_all(engine)
    factory = make_session_factory(engine)
    regions = RegionTree.load()
    calendar = ProvisionalCalendar()
    routing = Routing(
        node=COUNTY,
        regions=regions,
        catalogue=load_catalogue(COUNTY, regions),
        rules=TimeRules(TimeLimitPolicy.default(), calendar),
        calendar=calendar,
        new_id=lambda: "",
    )
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(str(args[2])))

    def place(n: int) -> None:
        pb = common_pb2.Case(
            case_id=f"{COUNTY}-20261122-{n:06d}", region_code=COUNTY, category="环境保护", registering_node=COUNTY
        )
        case = registered_case(pb, version=1, owner_epoch=1)
        with SqlRoutingUnitOfWork(factory, node=COUNTY) as uow:
            handlers.on_case_arrived(case, uow, routing, now=datetime(2026, 11, 23, 2, tzinfo=CHINA))
            uow.commit()

    for n in range(20):
        place(n)
    statements.clear()
    place(20)
    ran = len([s for s in statements if not s.startswith(("PRAGMA", "BEGIN"))])
    start = time.thread_time()
    for n in range(21, 21 + count):
        place(n)
    cpu = (time.thread_time() - start) / count
    print(f"routing placing a new case ({engine.dialect.name}): {cpu * 1000:.3f} ms of CPU, {ran} statements")
    if database_url.startswith("postgresql"):
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{SCHEMA}" CASCADE'))  # nothing left behind in the database
    engine.dispose()


def intake_steps(count: int) -> None:
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as data:
        node = Node(in_process_settings(data, None).with_overrides(node=COUNTY), services=("intake",)).start()
        try:
            parts = node.parts["intake"]
            servicer: Any = parts.servicers[0].servicer
            (sender,) = parts.timers
            factory = parts.session_factory
            assert factory is not None
            submissions = Submissions(COUNTY)
            for n in range(20):
                servicer.SubmitCase(submissions.request(0, n), SubmitContext())
            start = time.thread_time()
            cases = [
                servicer.SubmitCase(submissions.request(0, n), SubmitContext()).case.case_id
                for n in range(20, 20 + count)
            ]
            print(f"SubmitCase in the servicer (sqlite): {(time.thread_time() - start) / count * 1000:.3f} ms of CPU")
            follow = next(sub.handle for sub in parts.subscriptions if sub.event_type == "work_order_changed")
            start = time.thread_time()
            for case_id in cases:
                for env in placement_events(case_id):
                    follow(to_bus_event(env))
            print(f"intake following a placement's event: {(time.thread_time() - start) / count / 3 * 1000:.3f} ms")
            # As an embedded node's relay hands them: a placement's three events in one consumer transaction.
            batched = [
                servicer.SubmitCase(submissions.request(0, n), SubmitContext()).case.case_id
                for n in range(20 + count, 20 + 2 * count)
            ]

            def follow_all(placed: list[BusEvent]) -> None:
                for event in placed:
                    follow(event)

            start = time.thread_time()
            for case_id in batched:
                consume_batch(functools.partial(follow_all, [to_bus_event(e) for e in placement_events(case_id)]))
            each = (time.thread_time() - start) / count * 1000
            print(f"intake following a placement's three events in one batch: {each:.3f} ms")
            # As routing publishes a placement now (issue 21): one work_order_created carrying 受理 and 交办.
            one = [
                servicer.SubmitCase(submissions.request(0, n), SubmitContext()).case.case_id
                for n in range(20 + 2 * count, 20 + 3 * count)
            ]
            start = time.thread_time()
            for case_id in one:
                follow(to_bus_event(folded(placement_events(case_id))))
            each = (time.thread_time() - start) / count * 1000
            print(f"intake following a placement folded into one event: {each:.3f} ms")
            sender.run()  # the 受理 notices the following queued: sent before the passes timed below
            cpu = 0.0
            for case_id in cases:
                due = datetime.now(UTC) - timedelta(seconds=1)
                with factory() as session, session.begin():
                    session.add(
                        ProgressNoticeRow(
                            notice_id=f"{case_id}/99", case_id=case_id, kind="accepted", channel="sms", text="已受理",
                            created_at=due, state="pending", attempts=0, next_attempt_at=due, last_error="",
                        )
                    )  # fmt: skip
                start = time.thread_time()
                sender.run()
                cpu += time.thread_time() - start
            start = time.thread_time()
            for _ in range(count):
                sender.run()
            idle = (time.thread_time() - start) / count
            print(
                f"notice sender: a pass sending one {cpu / count * 1000:.3f} ms, with nothing due {idle * 1000:.3f} ms"
            )
        finally:
            node.stop(1.0)


def placement_events(case_id: str) -> list[events_pb2.EventEnvelope]:
    """Routing's events of a case placed with a unit at the county: created, accepted, assigned."""
    at, work_order_id = datetime.now(UTC), f"{case_id}@{COUNTY}"
    payloads: list[tuple[str, Any]] = [
        ("work_order_created", events_pb2.WorkOrderCreated(work_order_id=work_order_id, unit_id="u1", node=COUNTY)),
        (
            "work_order_changed",
            events_pb2.WorkOrderChanged(work_order_id=work_order_id, action="accept", to_state=ACCEPTED),
        ),
        (
            "work_order_changed",
            events_pb2.WorkOrderChanged(work_order_id=work_order_id, action="assign", to_state=ASSIGNED),
        ),
    ]
    where: dict[str, Any] = {"case_id": case_id, "owner_node": COUNTY, "owner_epoch": 1, "origin_node": COUNTY}
    return [
        envelope(payload_field=field, payload=payload, version=n, origin_service="routing", occurred_at=at, **where)
        for n, (field, payload) in enumerate(payloads, start=2)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--placements", type=int, default=300)
    parser.add_argument("--cases", type=int, default=150)
    parser.add_argument("--database-url", default=None, help="routing's database (default: a SQLite file)")
    options = parser.parse_args()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as data:
        placement(options.database_url or f"sqlite:///{data}/routing.db", options.placements)
    intake_steps(options.cases)


if __name__ == "__main__":
    main()
