"""The audit chain is keyed and anchored at the parent (SQLite and PostgreSQL): a row rewritten and the
chain recomputed after it, or the newest rows deleted, pass the local walk but not the anchors the
parent holds; and a child's polling of its parent is not audited, only what changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from lianxin.common.v1 import common_pb2
from lianxin.exchange.v1 import exchange_service_pb2 as exchange_pb2
from lianxin.exchange.v1 import exchange_service_pb2_grpc as exchange_grpc
from lianxin.intake.v1 import intake_service_pb2 as intake_pb2
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc

from services.common.audit import Anchor, AuditLog, AuditRecord, _canonical, audit_log, chain_hash, load_audit_key
from services.common.commands import parent_anchors
from services.common.db import make_engine, service_database_url
from services.node import Node
from tests.support.exchange_nodes import Start, linked_nodes, phone_for
from tests.support.helpers import wait_until

SUBMISSIONS = 4


@pytest.fixture(params=["sqlite", "postgres"])
def start(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Start]:
    with linked_nodes(request.param, tmp_path, lambda: str(request.getfixturevalue("postgres_admin_url"))) as starter:
        yield starter


def submit(node: Node, ref: str) -> None:
    with grpc.insecure_channel(node.address) as channel:
        intake_grpc.IntakeServiceStub(channel).SubmitCase(
            intake_pb2.SubmitCaseRequest(
                channel=common_pb2.CHANNEL_WEB,
                channel_ref=ref,
                title="小区门口夜间施工噪音扰民",
                body=f"嘉州大道某小区门口夜间施工，噪音扰民（{ref}）。",
                region_code="511102",
                complainant=common_pb2.Person(phone=phone_for(ref)),
            ),
            timeout=10,
        )


def anchored_head(county: Node, records: int) -> Anchor:
    audit_engine = make_engine(service_database_url(county.settings, "audit"), service="audit")
    heads: list[AuditRecord] = []

    def written() -> bool:
        # The interceptor writes the audit row as the RPC finishes, just after the client has its answer.
        head = AuditLog(audit_engine, county.code).head()
        heads[:] = [head] if head is not None else []
        return bool(heads) and heads[0].seq >= records

    try:
        wait_until(written, 10, f"{records} audit records at the county")
    finally:
        audit_engine.dispose()
    head = heads[0]
    found: list[Anchor] = []

    def held() -> bool:
        found[:] = parent_anchors(county.settings)
        return bool(found) and found[-1].seq == head.seq

    wait_until(held, 20, "the county's audit head anchored at the city")
    assert found[-1].hash == head.hash
    return found[-1]


def tamper(engine: sa.Engine, statements: list[tuple[str, dict[str, object]]]) -> None:
    """What someone with the database (and, worse, the audit key) would do, triggers disabled."""
    with engine.begin() as conn:
        postgres = conn.dialect.name == "postgresql"
        if postgres:
            conn.exec_driver_sql("ALTER TABLE audit_log DISABLE TRIGGER USER")
        for sql, params in statements:
            conn.execute(sa.text(sql), params)
        if postgres:
            conn.exec_driver_sql("ALTER TABLE audit_log ENABLE TRIGGER USER")


def recompute_from(engine: sa.Engine, key: bytes, first: int) -> None:
    """Rewrite every hash from record ``first`` on, as a forger holding the key would."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(audit_log).order_by(audit_log.c.seq)).all()
    prev = next(r.hash for r in rows if r.seq == first - 1)
    fixes: list[tuple[str, dict[str, object]]] = []
    for r in (r for r in rows if r.seq >= first):
        digest = chain_hash(prev, _canonical(r.seq, r.at, r.actor, r.node, r.method, r.target, r.outcome), key)
        fixes.append(
            ("UPDATE audit_log SET prev_hash = :p, hash = :h WHERE seq = :s", {"p": prev, "h": digest, "s": r.seq})
        )
        prev = digest
    tamper(engine, fixes)


def test_a_rewritten_and_recomputed_chain_and_a_truncated_one_are_found_against_the_parents_anchors(
    start: Start,
) -> None:
    city = start("511100", audit=True)
    county = start("511102", city, audit=True, audit_anchor_interval_s=0.05)
    for n in range(SUBMISSIONS):
        submit(county, f"audit-anchor-{n}")
    anchor = anchored_head(county, SUBMISSIONS)

    engine = make_engine(service_database_url(county.settings, "audit"), service="audit")
    key = load_audit_key(county.settings)
    audit = AuditLog(engine, county.code, key=key)
    try:
        assert audit.verify(parent_anchors(county.settings)).ok

        # Rewrite record 2 and recompute the chain after it with the key: the walk alone is fooled.
        tamper(engine, [("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 2", {})])
        recompute_from(engine, key, 2)
        assert audit.verify().ok
        report = audit.verify(parent_anchors(county.settings))
        assert not report.ok
        assert f"record {anchor.seq}: differs from the anchor held by the parent (rewritten)" in report.problems

        # Delete the newest records: the chain is shorter than what the parent saw.
        tamper(engine, [("DELETE FROM audit_log WHERE seq >= :s", {"s": anchor.seq - 1})])
        assert audit.verify().ok
        report = audit.verify(parent_anchors(county.settings))
        assert any("truncated" in problem for problem in report.problems), report.problems
    finally:
        engine.dispose()


def test_polling_the_parent_is_not_audited_only_what_changes(start: Start) -> None:
    city = start("511100", audit=True)
    county = start("511102", city, audit=True, audit_anchor_interval_s=0.05)
    submit(county, "audit-poll-1")
    anchored_head(county, 1)  # by now the county's pump has polled the city many times (PullDown each pass)
    engine = make_engine(service_database_url(city.settings, "audit"), service="audit")
    try:
        methods = [r.method.rsplit("/", 1)[-1] for r in AuditLog(engine, city.code).records()]
    finally:
        engine.dispose()
    assert "PullDown" not in methods and "ListAuditAnchors" not in methods
    assert "PushEvents" in methods  # the county's events and anchors changed what the city holds
    assert set(methods) <= {"PushEvents", "AckDown"}, methods


def test_a_push_with_only_the_audit_head_is_refused_from_a_non_child(start: Start) -> None:
    city = start("511100")
    with grpc.insecure_channel(city.address) as channel:
        request = exchange_pb2.PushEventsRequest(
            child_node="510104", audit_head=exchange_pb2.AuditHead(sequence=7, hash="ab" * 32)
        )
        with pytest.raises(grpc.RpcError) as refused:
            exchange_grpc.ExchangeServiceStub(channel).PushEvents(request, timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
