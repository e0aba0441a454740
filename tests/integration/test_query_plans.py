"""Every statement a request runs stays an index lookup among many stored cases (issue 20).

A node's intake and routing databases get years of skewed history (bench.preload: most cases
without an ID number, a few heavy submitters, all but the last weeks closed), then real RPCs run
against the real node while every statement it sends to the database is recorded; each recorded
statement is then explained with the values it ran with. SQLite, without statistics (as a node's
files are) and after ANALYZE: ``EXPLAIN QUERY PLAN`` must not SCAN a large table (a SCAN USING
INDEX walks a whole index, as a seq scan would). PostgreSQL: the generic plan (what a prepared
statement runs after a few executions, and what the submit path forces) and the custom plan must
not Seq Scan a large table, and the generic plan, executed, must not throw away more than a few
rows it read (the plan of issue 20 walked the date index and filtered out 100,498 rows: an index
scan, still linear).
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from lianxin.common.v1 import common_pb2
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc
from lianxin.intake.v1 import intake_service_pb2 as pb
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc
from lianxin.stats.v1 import stats_service_pb2 as stats_pb2
from lianxin.stats.v1 import stats_service_pb2_grpc as stats_grpc
from lianxin.video.v1 import video_service_pb2 as video_pb2
from lianxin.video.v1 import video_service_pb2_grpc as video_grpc
from psycopg import sql as psql
from psycopg.adapt import PyFormat, Transformer
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import Pool

from bench.preload import Preloaded, preload, valid_id_number
from bench.preload_history import History, preload_history
from bench.stats import synthetic
from services.common.settings import Settings
from services.common.timeutil import to_timestamp
from services.node import Node
from services.stats.domain import StatsConfig, shift_month, stat_month_of
from tests.support.helpers import wait_until

NODE = "511102"
CITY = "511100"
STORED = 40_000
LARGE = (
    "cases",
    "case_timeline",
    "work_orders",
    "work_order_history",
    "case_versions",
    "case_snapshots",
    # stats, video and exchange (the city node of the second test)
    "case_facts",
    "stats_rollups",
    "stats_region_rollups",
    "stats_daily_counts",
    "video_visits",
    "video_reservations",
    "up_log",
    "replica",
    "down_queue",
)
# A plan may read and drop a few rows (the closed cases among a person's last ones), not a growing share.
MOST_ROWS_REMOVED = 500
OPEN_STATES = [
    common_pb2.CASE_STATE_ASSIGNED,
    common_pb2.CASE_STATE_ACCEPTED,
    common_pb2.CASE_STATE_IN_PROGRESS,
    common_pb2.CASE_STATE_EXTENDED,
    common_pb2.CASE_STATE_OBJECTED,
    common_pb2.CASE_STATE_REOPENED,
]


@dataclass
class Statement:
    where: str  # SQLite file or PostgreSQL schema
    sql: str
    params: Any


@dataclass
class Recorder:
    """Statements as the drivers received them, in the order they ran; the first values of each kept."""

    backend: str
    seen: dict[tuple[str, str], Statement] = field(default_factory=dict)
    schemas: dict[int, str] = field(default_factory=dict)  # psycopg connection → its search_path
    on: bool = False  # the preload and the node's start are not requests

    def record(self, drive: Callable[[], None]) -> list[Statement]:
        """The statements on LARGE tables that ``drive`` made the node run."""
        self.on = True
        try:
            drive()
        finally:
            self.on = False
        return [s for s in self.seen.values() if re.search(rf"\b({'|'.join(LARGE)})\b", s.sql)]

    def note(self, where: str, sql: str, params: Any) -> None:
        if not self.on:
            return
        head = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else ""
        if head in {"SELECT", "WITH", "UPDATE", "DELETE", "(SELECT"}:
            self.seen.setdefault((where, sql), Statement(where, sql, params))


@pytest.fixture()
def recorder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    backend = request.node.callspec.params["backend"]
    found = Recorder(backend)

    inside = threading.local()  # in a SQLAlchemy execute: its statement is noted with its parameters

    def sqlalchemy_statement(conn: Any, _cursor: Any, statement: str, params: Any, _context: Any, many: bool) -> None:
        inside.on = True
        if conn.engine.dialect.name == "sqlite" and not many:
            found.note(str(conn.engine.url.database), statement, params)

    def sqlalchemy_done(*_args: Any) -> None:
        inside.on = False

    def sqlite_connected(dbapi_connection: Any, _record: Any) -> None:
        # Statements sent on the raw DBAPI cursor (stats' sums, exchange's bulk reads), as SQLite
        # ran them (values inlined).
        if not isinstance(dbapi_connection, sqlite3.Connection):
            return
        path = str(dbapi_connection.execute("PRAGMA database_list").fetchone()[2])

        def traced(sql: str) -> None:
            if not getattr(inside, "on", False):
                found.note(path, sql, None)

        dbapi_connection.set_trace_callback(traced)

    event.listen(Engine, "before_cursor_execute", sqlalchemy_statement)
    event.listen(Engine, "after_cursor_execute", sqlalchemy_done)
    event.listen(Engine, "handle_error", sqlalchemy_done)
    event.listen(Pool, "connect", sqlite_connected)
    # PostgreSQL: every statement, SQLAlchemy's and the submit path's own (plain psycopg).
    original = psycopg.Cursor.execute

    def psycopg_execute(cursor: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
        text = query if isinstance(query, str) else query.as_string(cursor.connection)
        schema = re.match(r'\s*SET search_path TO "(\w+)"', text)
        if schema:
            found.schemas[id(cursor.connection)] = schema.group(1)
        elif id(cursor.connection) in found.schemas:
            found.note(found.schemas[id(cursor.connection)], text, params)
        return original(cursor, query, params, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", psycopg_execute)
    try:
        yield found
    finally:
        event.remove(Engine, "before_cursor_execute", sqlalchemy_statement)
        event.remove(Engine, "after_cursor_execute", sqlalchemy_done)
        event.remove(Engine, "handle_error", sqlalchemy_done)
        event.remove(Pool, "connect", sqlite_connected)


@dataclass
class Loaded:
    node: Node
    settings: Settings
    stored: Preloaded
    url: str | None


@pytest.fixture(params=["sqlite", "postgres"], ids=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture()
def loaded(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Loaded]:
    url = None if backend == "sqlite" else str(request.getfixturevalue("postgres_url"))
    monkeypatch.setenv("LIANXIN_INTAKE_CLASSIFIER", "off")
    settings = Settings(node=NODE, data_dir=tmp_path, database_url=url, relay_interval_s=0.05, metrics_port=None)
    stored = preload(settings, STORED)
    node = Node(settings, services=("intake", "routing"))
    node.start()
    try:
        yield Loaded(node, settings, stored, url)
    finally:
        node.stop(grace=0.2)


def _drive(loaded: Loaded) -> None:
    """The per-request RPCs of a citizen, a clerk and a unit, as they come in."""
    heavy = loaded.stored
    people = [
        common_pb2.Person(name="李四", phone="13700001111"),  # new, phone only
        common_pb2.Person(name="王五", id_number=valid_id_number("51110219900101123")),  # new, ID number only
        common_pb2.Person(name="赵六", phone="13700002222", id_number=valid_id_number("51110219900101567")),
        common_pb2.Person(name="钱七", phone=heavy.heavy_phones[0]),  # hundreds of stored cases
        common_pb2.Person(name="孙八", id_number=heavy.heavy_id_numbers[1]),
        common_pb2.Person(name="周九", phone=heavy.heavy_phones[2], id_number=heavy.heavy_id_numbers[3]),
    ]
    with grpc.insecure_channel(loaded.node.address) as channel:
        intake = intake_grpc.IntakeServiceStub(channel)
        routing = routing_grpc.RoutingServiceStub(channel)
        submitted: list[tuple[pb.SubmitCaseResponse, str]] = []
        requests = []
        for n, person in enumerate(people):
            for text in ("小区车位严重不足，夜里车辆停满消防通道。", f"嘉州大道第{n}段路灯长期不亮，夜间通行不安全。"):
                request = pb.SubmitCaseRequest(
                    channel=common_pb2.CHANNEL_APP,
                    channel_ref=f"plan-{n}-{len(submitted)}",
                    title="小区停车难",
                    body=text,
                    category="城乡建设",
                    region_code=NODE,
                    complainant=person,
                )
                requests.append(request)
                submitted.append((intake.SubmitCase(request, timeout=10), person.phone[-4:]))
        retry = intake.SubmitCase(requests[0], timeout=10)  # found by its idempotency key
        assert not retry.created
        for reply, last4 in submitted[:6]:
            intake.GetCase(pb.GetCaseRequest(case_id=reply.case.case_id), timeout=10)
            if last4:
                intake.TrackCase(pb.TrackCaseRequest(tracking_code=reply.tracking_code, phone_last4=last4), timeout=10)
        for case_id, code, last4 in loaded.stored.sample[:3]:
            intake.GetCase(pb.GetCaseRequest(case_id=case_id), timeout=10)
            if last4:
                intake.TrackCase(pb.TrackCaseRequest(tracking_code=code, phone_last4=last4), timeout=10)
        newest = submitted[-1][0].case.case_id

        def routed() -> bool:
            found = routing.ListWorkOrders(routing_pb2.ListWorkOrdersRequest(case_id=newest), timeout=10)
            return bool(found.work_orders)

        wait_until(routed, timeout=30, message="routing made the work order of the last submit")
        order = routing.ListWorkOrders(routing_pb2.ListWorkOrdersRequest(case_id=newest), timeout=10).work_orders[0]
        inbox = routing.ListWorkOrders(
            routing_pb2.ListWorkOrdersRequest(
                unit_id=order.unit_id, states=OPEN_STATES, page=common_pb2.PageRequest(page_size=10)
            ),
            timeout=10,
        )
        assert inbox.page.next_page_token, "the unit's inbox has more than a page of open work orders"
        following = routing.ListWorkOrders(  # the next page
            routing_pb2.ListWorkOrdersRequest(
                unit_id=order.unit_id,
                states=OPEN_STATES,
                page=common_pb2.PageRequest(page_size=10, page_token=inbox.page.next_page_token),
            ),
            timeout=10,
        )
        pages = [*inbox.work_orders, *following.work_orders]
        assert len({w.work_order_id for w in pages}) == len(pages) == min(20, inbox.page.total_size)
        assert all(w.state in OPEN_STATES and w.unit_id == order.unit_id for w in pages)
        # The console's inbox of the whole node (a clerk without a unit) and its supervisions.
        node_inbox = routing.ListWorkOrders(
            routing_pb2.ListWorkOrdersRequest(states=OPEN_STATES, page=common_pb2.PageRequest(page_size=20)), timeout=10
        )
        assert len(node_inbox.work_orders) == 20
        # The console's inbox titles its page in one call, and the case page lists the case's supervisions.
        titled = intake.ListCases(
            pb.ListCasesRequest(
                case_ids=sorted({w.case_id for w in node_inbox.work_orders}), page=common_pb2.PageRequest(page_size=20)
            ),
            timeout=10,
        )
        assert {c.case_id for c in titled.cases} == {w.case_id for w in node_inbox.work_orders}
        # The console's inbox now: one call, titled from routing's copies of the cases (case_snapshots).
        read_model = routing.ListInbox(
            routing_pb2.ListInboxRequest(states=OPEN_STATES, page=common_pb2.PageRequest(page_size=20)), timeout=10
        )
        assert [i.work_order_id for i in read_model.items] == [w.work_order_id for w in node_inbox.work_orders]
        assert all(i.title for i in read_model.items)
        # The case page: the case's work orders with their histories in one call.
        routing.ListWorkOrders(routing_pb2.ListWorkOrdersRequest(case_id=newest, with_history=True), timeout=10)
        routing.ListSupervisions(routing_pb2.ListSupervisionsRequest(case_id=newest), timeout=10)
        routing.ListSupervisions(
            routing_pb2.ListSupervisionsRequest(region_code=NODE, page=common_pb2.PageRequest(page_size=10)), timeout=10
        )
        # The public reply board: the newest published replies, the next page, one category's.
        board = intake.ListPublishedReplies(
            pb.ListPublishedRepliesRequest(page=common_pb2.PageRequest(page_size=10)), timeout=10
        )
        assert len(board.replies) == 10 and board.page.total_size == -1
        intake.ListPublishedReplies(
            pb.ListPublishedRepliesRequest(
                page=common_pb2.PageRequest(page_size=10, page_token=board.page.next_page_token)
            ),
            timeout=10,
        )
        intake.ListPublishedReplies(
            pb.ListPublishedRepliesRequest(category="城乡建设", page=common_pb2.PageRequest(page_size=10)), timeout=10
        )
        routing.GetWorkOrder(routing_pb2.GetWorkOrderRequest(work_order_id=order.work_order_id), timeout=10)
        routing.AcceptWorkOrder(
            routing_pb2.AcceptWorkOrderRequest(work_order_id=order.work_order_id, actor="clerk-1"), timeout=10
        )
        # The deadline sweep (a timer, every minute in production): the work orders whose next
        # deadline boundary has passed, in batches by id.
        loaded.node.hooks.routing_sweep[NODE]()
        loaded.node.drain()


def _sqlite_problems(statement: Statement) -> list[str]:
    with sqlite3.connect(statement.where) as conn:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement.sql}", statement.params or ())]
    return [f"{line}" for line in plan if re.match(rf"SCAN ({'|'.join(LARGE)})\b", line)]


def _placeholders(sql: str, params: Any) -> tuple[str, list[Any]]:
    """psycopg's ``%(name)s``/``%s`` as PREPARE's ``$n``, with the values in order."""
    names: list[str] = []
    values: list[Any] = []
    positional = iter(params) if isinstance(params, (list, tuple)) else None

    def swap(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "%%":
            return "%"
        if token in ("%s", "%b", "%t"):
            assert positional is not None
            values.append(next(positional))
            return f"${len(values)}"
        name = match.group(1)
        if name not in names:
            names.append(name)
            values.append(params[name])
        return f"${names.index(name) + 1}"

    return re.sub(r"%\((\w+)\)[sbt]|%[sbt]|%%", swap, sql), values


def _postgres_problems(url: str, statement: Statement) -> list[str]:
    sql, values = _placeholders(statement.sql, statement.params)
    problems = []
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo) as conn:
        conn.execute(psql.SQL("SET search_path TO {}").format(psql.Identifier(statement.where)))
        # The types psycopg sends these values as (unknown for text and NULL, as on the wire).
        transformer = Transformer(conn)
        transformer.dump_sequence(values, [PyFormat.AUTO] * len(values))
        types = [
            conn.execute("SELECT %s::regtype::text", (oid,)).fetchone()[0] if oid else "unknown"  # type: ignore[index]
            for oid in transformer.types or ()
        ]
        prepare = f"PREPARE probe ({', '.join(types)}) AS {sql}" if values else f"PREPARE probe AS {sql}"
        conn.execute(prepare)
        args = psql.SQL(", ").join(psql.Literal(v) for v in values)
        execute = psql.SQL("EXECUTE probe({})").format(args) if values else psql.SQL("EXECUTE probe")
        for mode in ("force_generic_plan", "force_custom_plan"):
            conn.execute(f"SET plan_cache_mode = {mode}")
            analyse = "(ANALYZE) " if mode == "force_generic_plan" else ""
            plan = [row[0] for row in conn.execute(psql.SQL("EXPLAIN " + analyse) + execute)]
            for line in plan:
                if re.search(rf"Seq Scan on ({'|'.join(LARGE)})\b", line):
                    problems.append(f"{mode}: {line.strip()}")
                removed = re.search(r"Rows Removed by Filter: (\d+)", line)
                if removed and int(removed.group(1)) > MOST_ROWS_REMOVED:
                    problems.append(f"{mode}: {line.strip()}\n" + "\n".join(plan))
        conn.rollback()  # EXPLAIN ANALYZE ran UPDATEs and DELETEs: undone
    return problems


def test_every_statement_of_a_request_stays_an_index_lookup_among_many_stored_cases(
    backend: str, recorder: Recorder, loaded: Loaded
) -> None:
    large = recorder.record(lambda: _drive(loaded))
    # The lookup every submit makes, and the inbox, were among them (nothing passes by not being seen).
    assert any("phone_bidx" in s.sql and "id_number_bidx" in s.sql for s in large)
    assert any("work_orders" in s.sql and "next_due" in s.sql for s in large)
    assert any("work_orders" in s.sql and "next_sweep_at <=" in s.sql for s in large)
    assert any("publish_consent" in s.sql and "LIMIT" in s.sql for s in large)
    assert any("case_snapshots" in s.sql for s in large)
    _assert_index_lookups(backend, large, loaded.url)


def _assert_index_lookups(backend: str, large: list[Statement], url: str | None) -> None:
    """Every statement's plan, on SQLite (without statistics and after ANALYZE) or PostgreSQL."""
    problems: dict[str, list[str]] = {}
    if backend == "sqlite":
        # As a node runs (nothing analyses its files), and once more with statistics.
        for statistics in ("without statistics", "after ANALYZE"):
            if statistics == "after ANALYZE":
                for path in {s.where for s in large}:
                    with sqlite3.connect(path) as conn:
                        conn.execute("ANALYZE")
            for statement in large:
                for line in _sqlite_problems(statement):
                    problems.setdefault(" ".join(statement.sql.split())[:600], []).append(f"{statistics}: {line}")
    else:
        assert url is not None
        for statement in large:
            found = _postgres_problems(url, statement)
            if found:
                problems[" ".join(statement.sql.split())[:600]] = found
    assert not problems, "\n\n".join(f"{sql}\n  " + "\n  ".join(lines) for sql, lines in problems.items())


# SQLite's plan names a SEARCH for an index range however long the range: the statements of the
# city node's requests are also run, and each may execute at most this many virtual machine
# instructions. A page, a count stopped at COUNT_LIMIT, one statistical month of the city's facts
# (STORED // 4 facts over four years) take at most ~10,000; the overlap check that read the 4,000
# reservations of a leader's past took 20,200, the visit list that read them all 84,000.
MOST_VM_STEPS = 15_000
VM_STEP = 100
FACTS = STORED // 4


def _sqlite_steps(statement: Statement) -> int:
    """Virtual machine instructions the statement executes with its recorded values (undone after)."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += VM_STEP
        return 0

    conn = sqlite3.connect(statement.where, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.set_progress_handler(count, VM_STEP)
        conn.execute(statement.sql, statement.params or ()).fetchall()
        conn.set_progress_handler(None, VM_STEP)
        conn.execute("ROLLBACK")
    finally:
        conn.close()
    return steps


@dataclass
class CityLoaded:
    node: Node
    history: History
    url: str | None


@pytest.fixture()
def city(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CityLoaded]:
    url = None if backend == "sqlite" else str(request.getfixturevalue("postgres_url"))
    settings = Settings(node=CITY, data_dir=tmp_path, database_url=url, relay_interval_s=0.05, metrics_port=None)
    history = preload_history(settings, STORED, facts=FACTS)
    node = Node(settings, services=("exchange", "video", "stats"))
    node.start()
    try:
        with grpc.insecure_channel(node.address) as channel:
            video = video_grpc.VideoServiceStub(channel)
            video.PublishSchedule(
                video_pb2.PublishScheduleRequest(
                    actor="admin",
                    schedule=video_pb2.Schedule(
                        leader_id=history.leader,
                        node=CITY,
                        weekly_patterns=[
                            video_pb2.WeeklyPattern(weekday=d, start_time="09:00", end_time="12:00")
                            for d in range(1, 6)
                        ],
                        slot_minutes=30,
                        buffer_minutes=0,
                        max_per_session=6,
                        room_ids=[history.room],
                    ),
                ),
                timeout=10,
            )
        yield CityLoaded(node, history, url)
    finally:
        node.stop(grace=0.2)


def _drive_city(city: CityLoaded) -> None:
    """A supervisor's drill-down, a clerk's visit list and booking, and a child's link, at the city."""
    history = city.history
    month = shift_month(stat_month_of(datetime.now(UTC), StatsConfig()), -1)
    with grpc.insecure_channel(city.node.address) as channel:
        stats = stats_grpc.StatsServiceStub(channel)
        video = video_grpc.VideoServiceStub(channel)
        exchange = exchange_grpc.ExchangeServiceStub(channel)
        # Stats: the figures of the city, of a county and of a unit, with the cases behind them.
        figures = ["received", "reply_rate", "satisfaction_rate", "overdue"]
        for region, unit in ((CITY, ""), (history.child, ""), (CITY, history.units[0])):
            got = stats.GetMetrics(
                stats_pb2.GetMetricsRequest(
                    region_code=region, unit_id=unit, month=month, metrics=figures, include_case_ids=True
                ),
                timeout=30,
            )
            assert got.metrics[0].value > 0 and got.metrics[0].case_ids, f"{region} {unit} has cases in {month}"
        stats.RankRegions(
            stats_pb2.RankRegionsRequest(parent_region_code=CITY, metric="satisfaction_rate", month=month), timeout=30
        )
        stats.RankUnits(stats_pb2.RankUnitsRequest(region_code=CITY, metric="reply_rate", month=month), timeout=30)
        stats.ListHotspots(stats_pb2.ListHotspotsRequest(region_code=CITY), timeout=30)
        # Video: a leader's visits (two pages), a case's, a room's; free slots; a booking.
        first = video.ListVisits(
            video_pb2.ListVisitsRequest(leader_id=history.leader, page=common_pb2.PageRequest(page_size=20)), timeout=10
        )
        assert len(first.visits) == 20 and first.page.next_page_token
        video.ListVisits(
            video_pb2.ListVisitsRequest(
                leader_id=history.leader,
                page=common_pb2.PageRequest(page_size=20, page_token=first.page.next_page_token),
            ),
            timeout=10,
        )
        assert video.ListVisits(video_pb2.ListVisitsRequest(case_id=history.visit_cases[-1]), timeout=10).visits
        video.ListVisits(
            video_pb2.ListVisitsRequest(
                room_id=history.room,
                not_before=to_timestamp(datetime.now(UTC) - timedelta(days=30)),
                page=common_pb2.PageRequest(page_size=20),
            ),
            timeout=10,
        )
        assert video.ListSlots(video_pb2.ListSlotsRequest(leader_id=history.leader, max_items=8), timeout=10).slots
        booked = video.BookVisit(
            video_pb2.BookVisitRequest(
                case_id=f"{history.child}-20261201-000000001", actor="clerk", leader_id=history.leader
            ),
            timeout=10,
        ).visit
        assert booked.visit_id
        # Exchange: the child pushes a new case's first event, pulls and acknowledges its queue; the
        # link status; one case's replicas and digest.
        new_case = f"{history.child}-20261201-000000002"
        env = synthetic.registered(new_case, region=history.child, at=datetime.now(UTC))
        pushed = exchange.PushEvents(
            exchange_pb2.PushEventsRequest(
                child_node=history.child,
                items=[
                    exchange_pb2.ExchangeItem(
                        position=history.child_up + 1, envelope=env.SerializeToString(), case_sequence=1
                    )
                ],
            ),
            timeout=10,
        )
        assert pushed.acked_position == history.child_up + 1 and not pushed.rejections
        pulled = exchange.PullDown(
            exchange_pb2.PullDownRequest(child_node=history.child, after_position=history.down_head - 3, max_items=50),
            timeout=10,
        )
        assert len(pulled.items) == 3 and pulled.head_position == history.down_head
        exchange.AckDown(exchange_pb2.AckDownRequest(child_node=history.child, position=history.down_head), timeout=10)
        exchange.LinkStatus(exchange_pb2.LinkStatusRequest(), timeout=10)
        replicas = exchange.ListReplicas(
            exchange_pb2.ListReplicasRequest(case_id=history.replica_cases[-1], max_items=10), timeout=10
        )
        assert replicas.count == 1
        exchange.DigestCases(exchange_pb2.DigestCasesRequest(case_ids=history.replica_cases[-3:]), timeout=10)
    city.node.drain()


def test_the_supervisors_drill_down_visits_and_the_link_stay_index_lookups_among_many_stored_cases(
    backend: str, recorder: Recorder, city: CityLoaded
) -> None:
    large = recorder.record(lambda: _drive_city(city))
    # The drill-down, the visit page, the booking's overlap check and the link's reads were seen.
    for table, word in (
        ("case_facts", "SELECT case_facts.case_id FROM case_facts"),
        ("video_visits", "LIMIT"),
        ("video_reservations", "ORDER BY video_reservations.starts_at DESC"),
        ("down_queue", "position >"),
        ("replica", "case_sequence"),
    ):
        assert any(table in s.sql and word in " ".join(s.sql.split()) for s in large), f"no {table} with {word}"
    _assert_index_lookups(backend, large, city.url)
    if backend == "sqlite":
        steps = {" ".join(s.sql.split())[:600]: _sqlite_steps(s) for s in large}
        import os

        if os.environ.get("FLAT_DEBUG"):
            for sql, n in sorted(steps.items(), key=lambda x: -x[1]):
                print(f"{n:>9,} {sql[:220]}")
        heavy = {sql: n for sql, n in steps.items() if n > MOST_VM_STEPS}
        assert not heavy, "\n\n".join(f"{sql}\n  {n:,} instructions" for sql, n in heavy.items())
