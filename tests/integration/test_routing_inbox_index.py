"""Routing migration 0010 (issue 17, the node's inbox): a database made before it has its state index
without ``node`` replaced by ``ix_work_orders_state_node_due``, the inbox answers what it answered
before, and the inbox's per-state counts are answered from that index alone (no table row read per
counted work order) on SQLite; the upgrade and the answers on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine, event

from services.common.db import make_engine, make_session_factory
from services.common.migrations import upgrade
from services.routing.domain import OPEN_STATES
from services.routing.handlers import WorkOrderQuery
from services.routing.store import SqlRoutingUnitOfWork
from tests.support.routing_scenario import CITY, scenario

NEW = "ix_work_orders_state_node_due"
OLD = "ix_work_orders_state_due"


def _as_before_0010(engine: Engine) -> None:
    """The work order indexes as a database made before 0010 has them: the baseline builds today's
    tables, and 0007 added the index without ``node`` beside them."""
    assert {NEW, OLD} <= _indexes(engine)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP INDEX {NEW}"))


def _indexes(engine: Engine) -> set[str]:
    return {str(i["name"]) for i in sa.inspect(engine).get_indexes("work_orders")}


def _inboxes(engine: Engine) -> tuple[list[Any], list[tuple[str, Any]]]:
    """The node's open inbox a page of one at a time (so that it counts) and a full page, with the
    statements they ran on ``work_orders``."""
    seen: list[tuple[str, Any]] = []

    def note(_conn: Any, _cursor: Any, sql: str, params: Any, _context: Any, _many: bool) -> None:
        if "work_orders" in sql:
            seen.append((sql, params))

    event.listen(engine, "before_cursor_execute", note)
    try:
        answers: list[Any] = []
        query = WorkOrderQuery(states=tuple(OPEN_STATES))
        for limit in (1, 50):
            with SqlRoutingUnitOfWork(reads=engine, node=CITY) as uow:
                rows, total = uow.list_inbox(query, after=None, limit=limit)
            answers.append((rows, total))
    finally:
        event.remove(engine, "before_cursor_execute", note)
    return answers, seen


def _sqlite_count_plan(engine: Engine, statements: list[tuple[str, Any]]) -> str:
    (sql, params) = next(s for s in statements if "count(" in s[0].lower())
    with engine.connect() as conn:
        return "\n".join(str(r[3]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params))


def test_upgrading_puts_the_node_in_the_state_index_and_the_inbox_counts_from_it_alone(database_url: str) -> None:
    engine = make_engine(database_url, service="routing")
    try:
        upgrade(engine, "routing", revision="0009")
        _as_before_0010(engine)
        scenario(make_session_factory(engine), SqlRoutingUnitOfWork)
        before, _ = _inboxes(engine)
        assert before[0][1] > 1, "the first page of one counts the rest"

        upgrade(engine, "routing")
        upgrade(engine, "routing")  # a second start finds it and changes nothing
        assert NEW in _indexes(engine) and OLD not in _indexes(engine)
        after, statements = _inboxes(engine)
        assert after == before

        if engine.dialect.name == "sqlite":
            # PostgreSQL's plans among many rows: tests/integration/test_query_plans.py.
            plan = _sqlite_count_plan(engine, statements)
            assert f"USING COVERING INDEX {NEW} (state=? AND node=?)" in plan, plan
    finally:
        engine.dispose()
