"""GetCase inside a query RPC reads the case by statements built once (issue 17), and reads exactly
what the ORM reads: the case with its personal fields opened and its public timeline, on SQLite and
PostgreSQL; an unknown case is still NOT_FOUND.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.preload import preload
from services.common.crypto import cipher_from_env
from services.common.db import make_engine, make_session_factory, reading, service_database_url
from services.common.errors import NotFound
from services.common.settings import Settings
from services.intake.queries import get_case
from services.intake.store import SqlIntakeUnitOfWork

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

    try:
        for case_id, _code, _phone in stored.sample[:8]:
            with reading():
                case, timeline = get_case(case_id, uow_factory=uow)
            assert (case, timeline) == get_case(case_id, uow_factory=uow)
            assert case.case_id == case_id and timeline and all(e.case_id == case_id for e in timeline)
        with reading(), pytest.raises(NotFound):
            get_case(f"{NODE}-20991231-999999", uow_factory=uow)
    finally:
        engine.dispose()
