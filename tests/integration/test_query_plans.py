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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as pb
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from lianxin.routing.v1 import routing_service_pb2 as routing_pb2
from lianxin.routing.v1 import routing_service_pb2_grpc as routing_grpc
from psycopg import sql as psql
from psycopg.adapt import PyFormat, Transformer
from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url

from bench.preload import Preloaded, preload, valid_id_number
from services.common.settings import Settings
from services.node import Node
from tests.helpers import wait_until

NODE = "511102"
STORED = 40_000
LARGE = ("cases", "case_timeline", "work_orders", "work_order_history", "case_versions")
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

    def sqlalchemy_statement(conn: Any, _cursor: Any, statement: str, params: Any, _context: Any, many: bool) -> None:
        if conn.engine.dialect.name == "sqlite" and not many:
            found.note(str(conn.engine.url.database), statement, params)

    event.listen(Engine, "before_cursor_execute", sqlalchemy_statement)
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
        submitted = []
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
        routing.GetWorkOrder(routing_pb2.GetWorkOrderRequest(work_order_id=order.work_order_id), timeout=10)
        routing.AcceptWorkOrder(
            routing_pb2.AcceptWorkOrderRequest(work_order_id=order.work_order_id, actor="clerk-1"), timeout=10
        )
        # The deadline sweep (a timer, every minute in production): the work orders whose next
        # deadline boundary has passed, in batches by id.
        loaded.node.extras["routing_sweep"][NODE]()
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
        if token == "%s":
            assert positional is not None
            values.append(next(positional))
            return f"${len(values)}"
        name = match.group(1)
        if name not in names:
            names.append(name)
            values.append(params[name])
        return f"${names.index(name) + 1}"

    return re.sub(r"%\((\w+)\)s|%s|%%", swap, sql), values


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
            for oid in transformer.types
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
    recorder.on = True
    _drive(loaded)
    recorder.on = False
    statements = list(recorder.seen.values())
    large = [s for s in statements if re.search(rf"\b({'|'.join(LARGE)})\b", s.sql)]
    # The lookup every submit makes, and the inbox, were among them (nothing passes by not being seen).
    assert any("phone_bidx" in s.sql and "id_number_bidx" in s.sql for s in large)
    assert any("work_orders" in s.sql and "next_due" in s.sql for s in large)
    assert any("work_orders" in s.sql and "next_sweep_at <=" in s.sql for s in large)
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
        assert loaded.url is not None
        for statement in large:
            found = _postgres_problems(loaded.url, statement)
            if found:
                problems[" ".join(statement.sql.split())[:600]] = found
    assert not problems, "\n\n".join(f"{sql}\n  " + "\n  ".join(lines) for sql, lines in problems.items())
