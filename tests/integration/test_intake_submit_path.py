"""The submit's storage path: on PostgreSQL one lookup and one self-committing write on a pool of its
own (``store.PgSubmitPath``), on SQLite the session's transaction. What a user would notice if it went
wrong: a second case or a second event for one retried reference, a repeat linked to the wrong case,
submits failing after the database dropped its connections."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from lianxin.common.v1 import common_pb2
from lianxin.intake.v1 import intake_service_pb2 as pb
from lianxin.intake.v1 import intake_service_pb2_grpc as intake_grpc
from sqlalchemy.orm import Session, sessionmaker

from services.common.crypto import cipher_from_env
from services.common.db import make_engine, make_session_factory
from services.common.errors import AlreadyExists
from services.common.migrations import upgrade
from services.common.settings import Settings
from services.intake.domain import Case, CaseRegistered, CaseState, Complainant, TimelineEntry
from services.intake.store import CaseNumbers, SqlIntakeUnitOfWork
from services.intake.submit_sql import PgSubmitPath
from services.intake.tracking import new_tracking_code
from services.node import Node

NODE = "511102"
NOW = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


@dataclass
class Store:
    engine: sa.Engine
    path: PgSubmitPath | None
    numbers: CaseNumbers
    factory: sessionmaker[Session]

    def open(self) -> SqlIntakeUnitOfWork:
        return SqlIntakeUnitOfWork(self.factory, cipher_from_env(), NODE, numbers=self.numbers, submit_path=self.path)

    def count(self, table: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


@pytest.fixture()
def store(database_url: str) -> Iterator[Store]:
    engine = make_engine(database_url, service="intake")
    upgrade(engine, "intake")
    factory = make_session_factory(engine)
    path = PgSubmitPath(database_url) if engine.dialect.name == "postgresql" else None
    yield Store(engine, path, CaseNumbers(factory), factory)
    if path is not None:
        path.close()
    engine.dispose()


def new_case(store: Store, ref: str, *, simhash: int = 0, phone: str = "13900001111") -> Case:
    with store.open() as uow:
        number = uow.next_case_number(NOW.date())
        uow.commit()
    return Case(
        case_id=f"{NODE}-20261122-{number:06d}",
        tracking_code=new_tracking_code(),
        channel="app",
        channel_ref=ref,
        title="路灯不亮",
        body=f"嘉州大道路灯不亮 {ref}",
        category="城乡建设",
        region_code=NODE,
        registering_node=NODE,
        owner_node=NODE,
        state=CaseState.REGISTERED,
        submitted_at=NOW,
        updated_at=NOW,
        complainant=Complainant(name="张三", phone=phone),
        fingerprint=f"fp-{ref}",
        simhash=simhash,
    )


def register(store: Store, case: Case) -> None:
    with store.open() as uow:
        entry = TimelineEntry(case.case_id, NOW, case.state, "已登记 registered")
        uow.register(case, received_at=NOW, entry=entry, event=CaseRegistered(case))
        uow.commit()


def test_a_losing_registration_writes_no_case_no_timeline_and_no_event(store: Store) -> None:
    # Two submits of one reference both passed the lookup; the second to write must leave nothing,
    # or the retried reference would become a second case and a second CaseRegistered downstream.
    register(store, new_case(store, "ref-1"))
    with pytest.raises(AlreadyExists):
        register(store, new_case(store, "ref-1"))
    assert (store.count("cases"), store.count("case_timeline"), store.count("outbox")) == (1, 1, 1)
    with store.open() as uow:
        found = uow.submit_lookup(
            idempotency_key="app:ref-1", phone="", id_number="", since=None, fingerprint="", simhash=0
        )
    assert found.existing is not None and found.existing.complainant.name == "张三"


def test_the_lookup_offers_the_nearest_open_case_sharing_a_band(store: Store) -> None:
    base = 0x0123_4567_89AB_CDEF
    far = new_case(store, "far", simhash=base ^ 0b1111, phone="13900002222")  # 4 bits away
    near = new_case(store, "near", simhash=base ^ 0b1, phone="13900003333")  # 1 bit away
    register(store, far)
    register(store, near)
    with store.open() as uow:
        found = uow.submit_lookup(
            idempotency_key="app:new", phone="13900009999", id_number="", since=None, fingerprint="", simhash=base
        )
    nearest = min(found.near, key=lambda hit: bin(hit[1] ^ base).count("1"))
    assert nearest == (near.case_id, near.simhash)


def test_a_submit_leaves_its_event_for_the_relay_in_the_same_commit(store: Store) -> None:
    case = new_case(store, "ref-2")
    register(store, case)
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT event_type, case_id, published_at FROM outbox")).all()
    assert [(r.event_type, r.case_id, r.published_at) for r in rows] == [("case_registered", case.case_id, None)]


def test_submits_go_on_after_postgresql_drops_every_connection(postgres_url: str, tmp_path: Path) -> None:
    settings = Settings(node=NODE, data_dir=tmp_path, database_url=postgres_url, metrics_port=None)
    node = Node(settings, services=("intake",)).start()
    try:
        stub = intake_grpc.IntakeServiceStub(grpc.insecure_channel(node.address))

        def submit(ref: str) -> pb.SubmitCaseResponse:
            reply: pb.SubmitCaseResponse = stub.SubmitCase(
                pb.SubmitCaseRequest(
                    channel=common_pb2.CHANNEL_APP,
                    channel_ref=ref,
                    title="路灯不亮",
                    body=f"嘉州大道路灯不亮，事项 {ref}。",
                    category="城乡建设",
                    region_code=NODE,
                    complainant=common_pb2.Person(phone="13900004444"),
                ),
                timeout=10,
            )
            return reply

        first = submit("drop-1")
        # What a database restart or an idle-connection timeout does to both pools.
        admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            dropped = conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        admin.dispose()
        assert dropped >= 1
        assert submit("drop-2").created
        again = submit("drop-1")
        assert not again.created and again.case.case_id == first.case.case_id
    finally:
        node.stop(grace=0.2)


def test_two_api_processes_never_hand_out_the_same_case_number(store: Store) -> None:
    # Each replica takes blocks of numbers (PostgreSQL) from the shared per-day counter.
    other = Store(store.engine, store.path, CaseNumbers(store.factory), store.factory)
    taken: list[int] = []
    for n in range(3 * CaseNumbers.BLOCK):
        with (store if n % 3 else other).open() as uow:
            taken.append(uow.next_case_number(NOW.date()))
            uow.commit()
    assert len(set(taken)) == len(taken)
    mine = [number for n, number in enumerate(taken) if n % 3]
    assert mine == sorted(mine)
    with store.engine.connect() as conn:
        last = conn.execute(sa.text('SELECT "last" FROM case_sequence')).scalar_one()
    assert last >= max(taken)


def test_upgrading_recomputes_stored_simhashes_so_old_cases_still_match(database_url: str) -> None:
    """Intake migration 0002 (SimHash version 2): cases stored with version 1 values get version 2
    values and bands from their own text, so a new submission with that text finds them again."""
    from services.intake import dedup

    engine = make_engine(database_url, service="intake")
    upgrade(engine, "intake", revision="0001")
    factory = make_session_factory(engine)
    path = PgSubmitPath(database_url) if engine.dialect.name == "postgresql" else None
    old = Store(engine, path, CaseNumbers(factory), factory)
    texts = {}
    for n in range(3):
        case = new_case(old, f"v1-{n}", simhash=0x44FAF6899C9890C2 + n)  # version 1 values, as stored before
        register(old, case)
        texts[case.case_id] = dedup.submission_text(case.title, case.body)
    upgrade(engine, "intake")  # 0002
    with engine.connect() as conn:
        stored = {row.case_id: row for row in conn.execute(sa.text("SELECT * FROM cases"))}
    assert set(stored) == set(texts)
    for case_id, text in texts.items():
        value = dedup.simhash(text)
        row = stored[case_id]
        assert row.simhash % (1 << 64) == value
        assert [row.band0, row.band1, row.band2, row.band3] == [(value >> (16 * b)) & 0xFFFF for b in range(4)]
    # and the lookup a new submission makes finds the nearest of them again
    probe = dedup.simhash(texts[min(texts)])
    with old.open() as uow:
        found = uow.submit_lookup(
            idempotency_key="app:new", phone="", id_number="", since=None, fingerprint="none", simhash=probe
        )
    assert [case_id for case_id, _ in found.near][:1] == [min(texts)]
    if path is not None:
        path.close()
    engine.dispose()


def test_the_submit_lookup_plans_once_and_only_with_indexes(postgres_url: str) -> None:
    """Every submit runs the lookup; its plan is made once per connection (a generic plan, not a new
    plan per submit) and scans no table whole, even where many open cases share SimHash bands
    (one text posted by many people), which once made PostgreSQL scan every case on each submit."""
    import re

    from psycopg import sql as psycopg_sql

    from services.intake import dedup

    engine = make_engine(postgres_url, service="intake")
    upgrade(engine, "intake")
    factory = make_session_factory(engine)
    path = PgSubmitPath(postgres_url)
    store = Store(engine, path, CaseNumbers(factory), factory)
    value = dedup.simhash("嘉州大道路灯不亮")
    register(store, new_case(store, "crowd", simhash=value))
    with engine.begin() as conn:
        # 5,000 copies in the same bands: the planner's estimates then favour a sequential scan.
        conn.execute(
            sa.text(
                "INSERT INTO cases SELECT (jsonb_populate_record(NULL::cases, to_jsonb(c) || jsonb_build_object("
                "'case_id', c.case_id || '-' || g, 'tracking_code', 'T' || g, 'idempotency_key', 'crowd-' || g))).*"
                " FROM cases AS c, generate_series(1, 5000) AS g"
            )
        )
        conn.execute(sa.text("ANALYZE cases"))
    names: list[str] = []

    def placeholder(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    prepared = re.sub(r"%\((\w+)\)s", placeholder, path.lookup_sql)
    connection = path.connect()
    try:
        raw = connection.raw
        assert raw.execute("SHOW plan_cache_mode").fetchone() == ("force_generic_plan",)
        # The types the submit sends (the band values go as text, cast by the statement itself).
        types = {"rate_on": "boolean", "since": "timestamptz", "h": "bigint"}
        raw.execute(f"PREPARE lookup ({', '.join(types.get(n, 'text') for n in names)}) AS {prepared}")
        values = {"key": "app:x", "rate_on": True, "since": NOW, "pb": "x", "ib": "y", "fp": "z", "h": 1}
        values.update({f"b{n}": "1" for n in range(dedup.BANDS)})
        # EXECUTE takes no bound parameters: the values go as literals.
        args = psycopg_sql.SQL(", ").join(psycopg_sql.Literal(values[n]) for n in names)
        plan = "\n".join(row[0] for row in raw.execute(psycopg_sql.SQL("EXPLAIN EXECUTE lookup({})").format(args)))
    finally:
        connection.release()
        path.close()
        engine.dispose()
    assert "Seq Scan" not in plan, plan
    assert "Index" in plan
