"""Routing's prebuilt statements (issue 21) store exactly what the ORM stored: the same use cases run
through ``SqlRoutingUnitOfWork`` and through the ORM implementation it replaced
(``tests.support.routing_orm``), each on a database of its own, leave the same rows and the same
events, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from lianxin.events.v1 import events_pb2
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.orm import sessionmaker

from services.routing.models import metadata
from services.routing.store import SqlRoutingUnitOfWork
from tests.support.routing_orm import OrmReferenceUnitOfWork
from tests.support.routing_scenario import scenario


@pytest.fixture()
def engines(database_url: str) -> Iterator[tuple[Engine, Engine]]:
    """Two empty routing databases: SQLite files side by side, or two schemas of one PostgreSQL database."""
    made: list[Engine] = []
    for name in ("prebuilt", "orm"):
        if database_url.startswith("sqlite"):
            engine = create_engine(database_url.replace("test.db", f"{name}.db"))
        else:
            engine = create_engine(database_url, connect_args={"options": f"-csearch_path={name}"})
            with engine.begin() as conn:
                conn.execute(text(f"CREATE SCHEMA {name}"))
        metadata.create_all(engine)
        made.append(engine)
    yield made[0], made[1]
    for engine in made:
        engine.dispose()


def _envelope(body: bytes) -> Any:
    env = events_pb2.EventEnvelope.FromString(body)
    env.ClearField("event_id")  # a new id per event, whichever store
    return env


def _tables(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            keys = list(table.primary_key.columns) or list(table.columns)
            rows = conn.execute(select(table).order_by(*keys)).all()
            if table.name == "outbox":
                # Event and command ids are new ones per run: the events compared without them.
                out[table.name] = [
                    (r.source, r.event_type, r.case_id, _envelope(r.body) if r.event_type != "command" else None)
                    for r in rows
                ]
            else:
                out[table.name] = [tuple(r) for r in rows]
    return out


def test_a_city_s_placements_and_changes_store_what_the_orm_stored(engines: tuple[Engine, Engine]) -> None:
    prebuilt, orm = engines
    scenario(sessionmaker(prebuilt, expire_on_commit=False), SqlRoutingUnitOfWork)
    scenario(sessionmaker(orm, expire_on_commit=False), OrmReferenceUnitOfWork)
    got, expected = _tables(prebuilt), _tables(orm)
    assert got["work_orders"] and got["work_order_history"] and got["supervisions"] and got["case_merges"]
    assert {row[2] for row in got["outbox"]} >= {f"511100-20261122-00000{n}" for n in range(1, 8)}
    for name in expected:
        assert got[name] == expected[name], name
