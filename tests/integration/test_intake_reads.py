"""GetCase inside a query RPC reads the case by statements built once (issue 17), and reads exactly
what the ORM reads: the case with its personal fields opened and its public timeline, on SQLite and
PostgreSQL; an unknown case is still NOT_FOUND.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import bindparam, text

from bench.preload import preload
from services.common.crypto import cipher_from_env
from services.common.db import make_engine, make_session_factory, reading, service_database_url
from services.common.errors import NotFound
from services.common.settings import Settings
from services.common.timeutil import to_utc
from services.intake.case_rows import to_case
from services.intake.models import OPEN_CASE_SQL, CaseRow, ProgressNoticeRow
from services.intake.notices import Notice, NoticeStatus, render
from services.intake.queries import get_case
from services.intake.store import SqlIntakeUnitOfWork
from services.intake.submit_sql import LOOKUP_QUERIES, bands, lookup_sql, probe_params, probes

NODE = "511102"


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    url = None if request.param == "sqlite" else str(request.getfixturevalue("postgres_url"))
    return Settings(node=NODE, data_dir=tmp_path, database_url=url, metrics_port=None)


def test_a_case_read_by_a_query_rpc_is_the_case_the_orm_reads(settings: Settings) -> None:
    stored = preload(settings, 40, processes=0)
    engine = make_engine(service_database_url(settings, "intake"), service="intake")
    cipher = cipher_from_env(os.environ, key_dir=Path(settings.data_dir) / NODE)
    factory = make_session_factory(engine)

    def uow() -> SqlIntakeUnitOfWork:
        return SqlIntakeUnitOfWork(factory, cipher, NODE)

    def reads() -> SqlIntakeUnitOfWork:  # GetCase's: a read transaction on a Core connection, no ORM session
        return SqlIntakeUnitOfWork(None, cipher, NODE, reads=engine)

    try:
        for case_id, _code, _phone in stored.sample[:8]:
            with reading():
                case, timeline = get_case(case_id, uow_factory=uow)
            assert (case, timeline) == get_case(case_id, uow_factory=uow)
            assert (case, timeline) == get_case(case_id, uow_factory=reads)
            assert case.case_id == case_id and timeline and all(e.case_id == case_id for e in timeline)
        with reading(), pytest.raises(NotFound):
            get_case(f"{NODE}-20991231-999999", uow_factory=uow)
        with pytest.raises(NotFound):
            get_case(f"{NODE}-20991231-999999", uow_factory=reads)
        with reads() as read_only:
            assert read_only.get(stored.sample[0][0]) is not None
            assert read_only._session is None  # no ORM session was built
            with pytest.raises(RuntimeError):
                read_only.commit()
    finally:
        engine.dispose()


def test_a_case_read_with_nothing_pending_and_its_notices_are_what_the_orm_reads_and_wrote(settings: Settings) -> None:
    """A consumer following a case and the notice sender read it by the statement built once (issue
    21); a notice is queued by one insert unless its id is there, and read back as the ORM did."""
    stored = preload(settings, 10, processes=0)
    engine = make_engine(service_database_url(settings, "intake"), service="intake")
    cipher = cipher_from_env(os.environ, key_dir=Path(settings.data_dir) / NODE)
    factory = make_session_factory(engine)
    case_id = stored.sample[0][0]
    at = datetime(2026, 12, 7, 2, tzinfo=UTC)
    notice = Notice(f"{case_id}/3", case_id, "accepted", "sms", render("accepted", case_id), at)
    try:
        with SqlIntakeUnitOfWork(factory, cipher, NODE) as uow:
            case = uow.get(case_id)
            orm_row = uow.session.get(CaseRow, case_id)
            assert orm_row is not None and case == to_case(orm_row, cipher)
            assert uow.add_notice(notice)
            assert not uow.add_notice(notice)  # a redelivery queues nothing
            uow.commit()
        with factory() as session:
            row = session.get(ProgressNoticeRow, notice.notice_id)
            assert row is not None
            written = (row.case_id, row.kind, row.channel, row.text, to_utc(row.created_at), row.state, row.attempts)
            assert written == (case_id, "accepted", "sms", notice.text, at, "pending", 0)
            assert (row.next_attempt_at and to_utc(row.next_attempt_at), row.sent_at, row.last_error) == (at, None, "")
        with reading(), SqlIntakeUnitOfWork(factory, cipher, NODE) as uow:
            assert uow.notices(case_id) == [NoticeStatus("accepted", "sms", notice.text, "pending", at, None)]
    finally:
        engine.dispose()


def test_the_sqlite_lookup_s_fixed_band_parameters_find_what_the_expanding_lists_found(tmp_path: Path) -> None:
    """The submit's lookup on SQLite names each band's 17 probes as parameters of their own (issue 21);
    the statement it replaced bound each band as an expanding list. Both find the same rows."""
    settings = Settings(node=NODE, data_dir=tmp_path, database_url=None, metrics_port=None)
    preload(settings, 60, processes=0)
    engine = make_engine(service_database_url(settings, "intake"), service="intake")
    old_sql = re.sub(r"IN \(:b(\d)_0(?:, :b\d_\d+)*\)", r"IN :b\1", lookup_sql(postgres=False))
    old = text(old_sql).bindparams(*(bindparam(f"b{n}", expanding=True) for n in range(4)))
    try:
        with engine.begin() as conn:  # a dozen of the stored cases open again: the bands look at open cases
            some = "SELECT case_id FROM cases ORDER BY case_id LIMIT 12"
            conn.execute(text(f"UPDATE cases SET state = 'ACCEPTED' WHERE case_id IN ({some})"))
        with engine.connect() as conn:
            open_cases = f"SELECT simhash, fingerprint FROM cases WHERE {OPEN_CASE_SQL} ORDER BY case_id LIMIT 12"
            stored = conn.execute(text(open_cases)).all()
            assert stored
            for simhash, fingerprint in stored:
                for flipped in (simhash, simhash ^ 1, simhash ^ (1 << 40)):  # itself and a near duplicate
                    params: dict[str, object] = {"key": None, "since": None, "pb": None, "ib": None, "fp": fingerprint}
                    values = bands(flipped & ((1 << 64) - 1))
                    new_rows = conn.execute(LOOKUP_QUERIES[False], {**params, **probe_params(values)}).all()
                    expanded = {f"b{n}": probes(v) for n, v in enumerate(values)}
                    assert sorted(new_rows, key=repr) == sorted(
                        conn.execute(old, {**params, **expanded}).all(), key=repr
                    )
                    assert any(kind == "near" for kind, _case, _num in new_rows)
    finally:
        engine.dispose()
