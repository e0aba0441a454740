"""PostgreSQL LISTEN/NOTIFY on the outbox: the commit that writes an outbox row wakes the relay's listener.

A worker's relay waits on ``OutboxListener`` instead of polling every 0.2 s (docs/exchange.md,
"Waiting, not polling"); these tests drive the listener and the trigger on a real PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, MetaData, Table, text

from services.common.db import make_engine, make_session_factory, transaction
from services.common.migrations import upgrade
from services.common.outbox import (
    NOTIFY_TRIGGER,
    OutboxListener,
    append_event,
    install_outbox_notify,
    outbox_table,
)
from services.common.service import BusEvent


def _event(n: int) -> BusEvent:
    return BusEvent(event_id=f"{n:08d}-0000-4000-8000-00000000000a", source="svc", event_type="t", body=b"x")


@pytest.fixture()
def outbox(postgres_url: str) -> Iterator[tuple[Engine, Table]]:
    engine = make_engine(postgres_url, service="notified", pool_size=2, max_overflow=0)
    metadata = MetaData()
    table = outbox_table(metadata)
    metadata.create_all(engine)
    with engine.begin() as conn:
        assert install_outbox_notify(conn) is True
        assert install_outbox_notify(conn) is False  # present: left alone
    yield engine, table
    engine.dispose()


def test_a_commit_into_the_outbox_wakes_the_listener_and_a_rollback_does_not(outbox: tuple[Engine, Table]) -> None:
    engine, table = outbox
    factory = make_session_factory(engine)
    listener = OutboxListener(engine)
    try:
        assert listener.wait(0) is False  # nothing committed yet
        with pytest.raises(RuntimeError), transaction(factory) as session:
            append_event(session, table, _event(1), case_id="c-1")
            raise RuntimeError("the business change failed")
        with transaction(factory) as session:
            append_event(session, table, _event(2), case_id="c-2")
        # The rolled-back insert sent nothing; the committed one is waiting to be read, so this
        # returns at once (the timeout only bounds a failure).
        assert listener.wait(30) is True
        assert listener.wait(0) is False  # consumed: one commit, one wake
    finally:
        listener.close()


def test_listeners_of_other_schemas_are_not_woken(postgres_url: str, outbox: tuple[Engine, Table]) -> None:
    engine, table = outbox
    other = make_engine(postgres_url, service="elsewhere", pool_size=1, max_overflow=0)
    metadata = MetaData()
    outbox_table(metadata)
    metadata.create_all(other)
    with other.begin() as conn:
        install_outbox_notify(conn)
    mine, theirs = OutboxListener(engine), OutboxListener(other)
    try:
        assert mine.channel != theirs.channel
        with transaction(make_session_factory(engine)) as session:
            append_event(session, table, _event(3), case_id=None)
        assert mine.wait(30) is True
        assert theirs.wait(0) is False
    finally:
        mine.close()
        theirs.close()
        other.dispose()


def test_every_service_migration_installs_the_trigger(postgres_url: str) -> None:
    for service in ("intake", "routing", "exchange", "video", "stats"):
        engine = make_engine(postgres_url, service=service, pool_size=2, max_overflow=0)
        try:
            upgrade(engine, service)
            upgrade(engine, service)  # a second start finds it and changes nothing
            with engine.connect() as conn:
                count = conn.execute(
                    text("SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass('outbox') AND tgname = :n"),
                    {"n": NOTIFY_TRIGGER},
                ).scalar_one()
            assert count == 1, service
        finally:
            engine.dispose()
