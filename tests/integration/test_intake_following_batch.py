"""Intake following a placement's three work order events in one consumer transaction (a relay
batch) reads the case once and takes the saved case for the next two (``SqlIntakeUnitOfWork.get``),
and leaves exactly what following them one transaction each leaves: the case row, its public
timeline and its progress notices, on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from bench.case_steps import SubmitContext, placement_events
from bench.harness.workload import Submissions
from services.common.events import folded, to_bus_event
from services.common.inbox import consume_batch
from services.common.service import BusEvent
from services.common.settings import Settings
from services.node import Node

COUNTY = "511102"


@pytest.fixture(params=["sqlite", "postgres"])
def intake(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Node]:
    url = None if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))
    monkeypatch.setenv("LIANXIN_INTAKE_CLASSIFIER", "off")  # two submissions need no category model
    settings = Settings(node=COUNTY, data_dir=tmp_path, database_url=url, metrics_port=None, log_json=False)
    node = Node(settings, services=("intake",)).start()
    try:
        yield node
    finally:
        node.stop(1.0)


def _case_state(node: Node, case_id: str) -> tuple[Any, ...]:
    """The case's handling columns, timeline and notices, its own id written ``<case>``."""
    factory = node.parts["intake"].session_factory
    assert factory is not None
    with factory() as session:
        case = session.execute(
            text(
                "SELECT state, version, owner_node, owner_epoch, handling_version, work_order_id, unit_id,"
                " reply_count, handling_due, updated_at FROM cases WHERE case_id = :c"
            ),
            {"c": case_id},
        ).one()
        timeline = session.execute(
            text("SELECT state, summary, at FROM case_timeline WHERE case_id = :c ORDER BY at, id"), {"c": case_id}
        ).all()
        notices = session.execute(
            text("SELECT kind, channel, state, created_at FROM progress_notices WHERE case_id = :c ORDER BY notice_id"),
            {"c": case_id},
        ).all()

    def named(row: Any) -> tuple[Any, ...]:
        return tuple(v.replace(case_id, "<case>") if isinstance(v, str) else v for v in row)

    return named(case), [named(row) for row in timeline], [named(row) for row in notices]


def test_a_placements_events_followed_in_one_transaction_leave_what_one_transaction_each_leaves(intake: Node) -> None:
    parts = intake.parts["intake"]
    servicer: Any = parts.servicers[0].servicer
    submissions = Submissions(COUNTY)
    one_by_one, batched = (
        servicer.SubmitCase(submissions.request(0, n), SubmitContext()).case.case_id for n in range(2)
    )
    handle = {sub.event_type: sub.handle for sub in parts.subscriptions if sub.source == "routing"}

    def events(case_id: str) -> list[BusEvent]:
        return [to_bus_event(env) for env in placement_events(case_id)]

    def follow(placed: list[BusEvent]) -> None:
        for event in placed:
            handle[event.event_type](event)

    follow(events(one_by_one))  # each event in a transaction of its own
    placed = events(batched)
    assert consume_batch(lambda: follow(placed))
    # Timestamps differ between the two placements only where the events' own times do.
    first, second = _case_state(intake, one_by_one), _case_state(intake, batched)
    assert first[0][:-2] == second[0][:-2]
    assert [row[:2] for row in first[1]] == [row[:2] for row in second[1]]
    assert [row[:2] for row in first[2]] == [row[:2] for row in second[2]] == [("accepted", "sms")]
    assert second[0][0] == "ASSIGNED" and second[0][4] == 4  # followed to the last of the three
    assert [row[1] for row in second[1]][-2:] == ["已受理 accepted", "已交办 assigned to the handling unit"]
    # Delivered again (a relay retrying the batch): nothing changes (the notice's state is the
    # sender's, which the commit woke).
    assert consume_batch(lambda: follow(placed))
    again = _case_state(intake, batched)
    assert again[:2] == second[:2] and [row[:2] for row in again[2]] == [("accepted", "sms")]


def test_a_placement_folded_into_its_creation_leaves_what_its_three_events_leave(intake: Node) -> None:
    """Issue 21: routing publishes one work_order_created carrying its 受理 and 交办; intake follows it
    in one transaction and leaves the case row, the timeline (已受理, 已交办) and the 受理 notice that
    the three events left, and a redelivery changes nothing."""
    parts = intake.parts["intake"]
    servicer: Any = parts.servicers[0].servicer
    submissions = Submissions(COUNTY)
    three, one = (servicer.SubmitCase(submissions.request(0, n), SubmitContext()).case.case_id for n in range(2))
    handle = {sub.event_type: sub.handle for sub in parts.subscriptions if sub.source == "routing"}
    for event in [to_bus_event(env) for env in placement_events(three)]:
        handle[event.event_type](event)
    placed = to_bus_event(folded(placement_events(one)))
    assert placed.event_type == "work_order_created"
    handle[placed.event_type](placed)
    first, second = _case_state(intake, three), _case_state(intake, one)
    assert first[0][:-2] == second[0][:-2]  # state, version, owner, handling version 4, work order, unit...
    assert second[0][0] == "ASSIGNED" and second[0][4] == 4
    assert [row[:2] for row in first[1]] == [row[:2] for row in second[1]]
    assert [row[1] for row in second[1]][-2:] == ["已受理 accepted", "已交办 assigned to the handling unit"]
    assert [row[:2] for row in first[2]] == [row[:2] for row in second[2]] == [("accepted", "sms")]
    handle[placed.event_type](placed)  # redelivered
    again = _case_state(intake, one)
    assert again[:2] == second[:2] and [row[:2] for row in again[2]] == [("accepted", "sms")]
