"""Routing's list reads (issue 17: the console's inbox and case page) answer what reading the work
orders one by one answers: the inbox's per-state counts in one statement, a list's histories in one
statement, the supervisions by prebuilt Core statements, the inbox's titles joined into its page
statement, and the query RPCs' read-only unit of work (a Core connection, no ORM session) what the
session's answers, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from lianxin.common.v1 import common_pb2
from sqlalchemy import Engine, create_engine, delete, select
from sqlalchemy.orm import Session, sessionmaker

from services.routing.domain import State
from services.routing.handlers import FAR_FUTURE, StoredWorkOrder, WorkOrderQuery
from services.routing.models import CaseSnapshotRow, SupervisionRow, WorkOrderRow, metadata
from services.routing.store import SqlRoutingUnitOfWork
from tests.support.routing_scenario import CITY, scenario

OPEN = (State.ASSIGNED, State.ACCEPTED, State.IN_PROGRESS, State.OBJECTED, State.EXTENDED, State.REOPENED)


@pytest.fixture()
def factory(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine: Engine = create_engine(database_url)
    metadata.create_all(engine)
    made = sessionmaker(engine, expire_on_commit=False)
    scenario(made, SqlRoutingUnitOfWork)
    yield made
    engine.dispose()


def _one_by_one(uow: SqlRoutingUnitOfWork, query: WorkOrderQuery) -> list[StoredWorkOrder]:
    """Every work order of the node read by id (its own history statement), filtered and ordered here."""
    ids = uow.session.scalars(select(WorkOrderRow.work_order_id).where(WorkOrderRow.node == CITY)).all()
    every = [s for s in (uow.get(i) for i in ids) if s is not None]
    kept = [
        s
        for s in every
        if (not query.unit_id or s.order.unit_id == query.unit_id)
        and (not query.case_id or s.order.case_id == query.case_id)
        and (not query.states or s.order.state in query.states)
    ]
    return sorted(kept, key=lambda s: (s.next_due or FAR_FUTURE, s.order.id))


def _without_history(s: StoredWorkOrder) -> tuple[Any, ...]:
    return (s.order.id, s.order.state, s.order.deadlines, s.order.windows, s.next_due, s.saved_history)


def test_lists_and_inboxes_answer_what_the_work_orders_read_one_by_one_answer(
    factory: sessionmaker[Session],
) -> None:
    with SqlRoutingUnitOfWork(factory, node=CITY) as uow:
        every = _one_by_one(uow, WorkOrderQuery())
        units = sorted({s.order.unit_id for s in every if s.order.unit_id})
        assert len({s.order.state for s in every}) >= 3 and units
        queries = [WorkOrderQuery(states=OPEN), WorkOrderQuery(), WorkOrderQuery(states=(State.ASSIGNED,))]
        queries += [WorkOrderQuery(unit_id=u, states=OPEN) for u in units]
        for query in queries:
            expected = _one_by_one(uow, query)
            for limit in (1, 2, 50):
                found, total = uow.list_work_orders(query, after=None, limit=limit)
                assert total == len(expected), query
                assert [_without_history(s) for s in found] == [
                    (*_without_history(s)[:-1], 0) for s in expected[:limit]
                ]
                inbox, inbox_total = uow.list_inbox(query, after=None, limit=limit)
                assert inbox_total == total
                assert [(r.work_order_id, r.state, r.deadlines, r.windows) for r in inbox] == [
                    (s.order.id, s.order.state, s.order.deadlines, s.order.windows) for s in expected[:limit]
                ]
            if len(expected) > 1:  # the next page, after the first work order
                first = expected[0]
                after = (first.next_due or FAR_FUTURE, first.order.id)
                found, total = uow.list_work_orders(query, after=after, limit=50)
                assert [s.order.id for s in found] == [s.order.id for s in expected[1:]]
                assert total == len(expected)  # the whole list's, not the page's
        for case_id in sorted({s.order.case_id for s in every}):
            query = WorkOrderQuery(case_id=case_id, with_history=True)
            found, total = uow.list_work_orders(query, after=None, limit=50)
            expected = _one_by_one(uow, query)
            assert found == expected and total == len(expected)  # histories included
        assert any(s.order.history for s in every)


def test_supervision_lists_answer_what_the_orm_read_answers(factory: sessionmaker[Session]) -> None:
    with SqlRoutingUnitOfWork(factory, node=CITY) as uow:
        rows = uow.session.scalars(
            select(SupervisionRow).order_by(SupervisionRow.issued_at.desc(), SupervisionRow.supervision_id)
        ).all()
        assert rows
        for case_id, prefix in [("", ""), (rows[0].case_id, ""), ("", CITY[:4]), ("", "9999"), ("nope", "")]:
            expected = [
                r.supervision_id
                for r in rows
                if (not case_id or r.case_id == case_id) and r.region_code.startswith(prefix)
            ]
            found, total = uow.list_supervisions(case_id=case_id, region_prefix=prefix, after=None, limit=50)
            assert [s.supervision_id for s in found] == expected and total == len(expected)
            if found:
                first = found[0]
                rest, rest_total = uow.list_supervisions(
                    case_id=case_id, region_prefix=prefix, after=(first.issued_at, first.supervision_id), limit=50
                )
                assert [s.supervision_id for s in rest] == expected[1:] and rest_total == len(expected)


def _titles_for_some_cases(factory: sessionmaker[Session]) -> None:
    """Every other case of the scenario with a titled snapshot, the others with none (their inbox rows
    have no title)."""
    with SqlRoutingUnitOfWork(factory, node=CITY) as uow:
        case_ids = sorted(set(uow.session.scalars(select(WorkOrderRow.case_id)).all()))
        for n, case_id in enumerate(case_ids):
            if n % 2:
                uow.session.execute(delete(CaseSnapshotRow).where(CaseSnapshotRow.case_id == case_id))
            else:
                uow.keep_snapshot(case_id, common_pb2.Case(case_id=case_id, title=f"标题 {n}").SerializeToString())
        uow.commit()


def test_the_read_only_unit_of_work_answers_what_the_sessions_answers_and_titles_are_the_snapshots(
    factory: sessionmaker[Session],
) -> None:
    _titles_for_some_cases(factory)
    engine = factory.kw["bind"]
    with SqlRoutingUnitOfWork(factory, node=CITY) as uow:
        every = _one_by_one(uow, WorkOrderQuery())
        # The titles as the inbox read them before (a statement of their own, by case id).
        titles = {
            r.case_id: common_pb2.Case.FromString(r.snapshot).title
            for r in uow.session.scalars(select(CaseSnapshotRow))
        }
        assert 0 < len(titles) < len({s.order.case_id for s in every})
        units = sorted({s.order.unit_id for s in every if s.order.unit_id})
        queries = [WorkOrderQuery(states=OPEN), WorkOrderQuery(), WorkOrderQuery(states=(State.ASSIGNED,))]
        queries += [WorkOrderQuery(unit_id=u, states=OPEN) for u in units]
        queries += [WorkOrderQuery(case_id=c, with_history=True) for c in sorted({s.order.case_id for s in every})]
        pages = [(None, limit) for limit in (1, 2, 50)] + [
            ((s.next_due or FAR_FUTURE, s.order.id), 50) for s in every[:2]
        ]
        with SqlRoutingUnitOfWork(reads=engine, node=CITY) as reads:
            assert not hasattr(reads, "session")  # no ORM session was built
            for query in queries:
                for after, limit in pages:
                    inbox = uow.list_inbox(query, after=after, limit=limit)
                    assert reads.list_inbox(query, after=after, limit=limit) == inbox
                    assert reads.list_work_orders(query, after=after, limit=limit) == uow.list_work_orders(
                        query, after=after, limit=limit
                    )
                    expected = [
                        s
                        for s in _one_by_one(uow, query)
                        if after is None or (s.next_due or FAR_FUTURE, s.order.id) > after
                    ]
                    assert [
                        (r.work_order_id, r.case_id, r.title, r.category, r.unit_id, r.next_due) for r in inbox[0]
                    ] == [
                        (
                            s.order.id,
                            s.order.case_id,
                            titles.get(s.order.case_id, ""),
                            s.order.category,
                            s.order.unit_id or "",
                            s.next_due or FAR_FUTURE,
                        )
                        for s in expected[:limit]
                    ]
            for s in every:
                assert reads.get(s.order.id) == uow.get(s.order.id)
            assert reads.get("nope") is None
            case_id = every[0].order.case_id
            for case_filter, prefix in [("", ""), (case_id, ""), ("", CITY[:4])]:
                assert reads.list_supervisions(
                    case_id=case_filter, region_prefix=prefix, after=None, limit=50
                ) == uow.list_supervisions(case_id=case_filter, region_prefix=prefix, after=None, limit=50)
            with pytest.raises(RuntimeError):
                reads.commit()
