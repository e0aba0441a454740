"""The consumer side of the outbox (DESIGN §4): an idempotent inbox, and batches of events in one transaction.

Delivery is at least once, so every consumer goes through ``consume_once``, which records the event
id in the consumer's inbox (``services.common.outbox.inbox_table``) in the same transaction as the
consumer's own change. The relay hands a consumer a run's events inside ``consume_batch``: every
``consume_once`` in it joins one transaction per database, committed at the end.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Table
from sqlalchemy.orm import Session, sessionmaker

from services.common.db import transaction
from services.common.service import BusEvent, utc_now

log = logging.getLogger(__name__)

_INBOX_SQL: dict[tuple[str, str], str] = {}
_SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%f"


def _inbox_sql(inbox: Table, dialect: str) -> str:
    """The inbox's insert-unless-present as plain SQL, for the connection's DB-API cursor: every event
    every consumer takes runs it, and SQLAlchemy's execution of even a prebuilt statement (compiled
    cache lookup, parameter processing, result wrapping) cost more than SQLite's running it."""
    key = (inbox.name, dialect)
    sql = _INBOX_SQL.get(key)
    if sql is None:
        mark = "%s" if dialect == "postgresql" else "?"
        sql = _INBOX_SQL[key] = (
            f"INSERT INTO {inbox.name} (consumer, event_id, received_at) VALUES ({mark}, {mark}, {mark}) "
            "ON CONFLICT DO NOTHING RETURNING event_id"
        )
    return sql


class _ConsumerBatch:
    """The one transaction per database that every ``consume_once`` joins while ``consume_batch`` runs."""

    def __init__(self) -> None:
        self.sessions: dict[int, Session] = {}
        self.after: list[Callable[[], None]] = []
        self.failed: BaseException | None = None

    def session(self, factory: sessionmaker[Session]) -> Session:
        session = self.sessions.get(id(factory))
        if session is None:
            session = self.sessions[id(factory)] = factory()
            session.begin()
        return session

    @contextlib.contextmanager
    def joined(self, factory: sessionmaker[Session]) -> Iterator[Session]:
        session = self.session(factory)
        try:
            yield session
            session.flush()
        except BaseException as exc:
            # Kept even if the handler swallows it: the batch then commits nothing.
            self.failed = exc
            raise
        finally:
            # The next event starts with an empty identity map, as in a transaction of its own: an
            # object loaded for an earlier event must not hide what a later statement changed.
            session.expunge_all()

    def commit(self) -> None:
        for session in self.sessions.values():
            _run_before_commit(session)
            session.commit()

    def close(self) -> None:
        for session in self.sessions.values():
            with contextlib.suppress(Exception):
                session.close()  # rolls back what did not commit


_BATCH: contextvars.ContextVar[_ConsumerBatch | None] = contextvars.ContextVar("lianxin_consumer_batch", default=None)


def consume_batch(deliver: Callable[[], None]) -> bool:
    """Run ``deliver`` (several events to one consumer, in order) so that every ``consume_once`` in it
    joins one transaction per database, committed at the end: one commit for the events instead of one
    each. True when it committed.

    False when anything failed (an exception out of ``deliver``, or out of an ``apply`` even if a
    handler swallowed it, or the commit): nothing of the batch is kept, and the caller delivers the
    events one by one, so only a bad event stays undelivered. The guarantees are ``consume_once``'s:
    each inbox row commits with its change, a duplicate is skipped. ``after_commit`` callbacks run once
    each after the commit.
    """
    batch = _ConsumerBatch()
    token = _BATCH.set(batch)
    try:
        try:
            deliver()
        finally:
            _BATCH.reset(token)
        if batch.failed is not None:
            return False
        batch.commit()
    except Exception:
        log.debug("consumer batch rolled back; delivering one by one", exc_info=True)
        return False
    finally:
        batch.close()
    for callback in batch.after:
        try:
            callback()
        except Exception:
            log.warning("after-commit callback failed", exc_info=True)
    return True


@contextlib.contextmanager
def consumer_transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A consumer's unit of work on ``factory``'s database: inside ``consume_batch`` the batch's
    transaction (committed with the batch; anything the caller caches about it belongs in
    ``after_commit``), else one of its own (``transaction``)."""
    batch = _BATCH.get()
    if batch is None:
        with transaction(factory) as session:
            yield session
            _run_before_commit(session)
        return
    with batch.joined(factory) as session:
        yield session


_BEFORE_COMMIT = "lianxin_before_commit"


def before_commit(session: Session, key: str, callback: Callable[[], None]) -> None:
    """Call ``callback`` in ``session``'s consumer transaction just before it commits (the first
    callback given for ``key`` only): at the end of ``consume_once``'s own transaction, or inside
    ``consume_batch`` once for the whole batch, so a consumer can write what its events add up to in
    one statement instead of one per event. If it raises, nothing of the transaction is kept."""
    session.info.setdefault(_BEFORE_COMMIT, {}).setdefault(key, callback)


def _run_before_commit(session: Session) -> None:
    for callback in session.info.pop(_BEFORE_COMMIT, {}).values():
        callback()


def after_commit(callback: Callable[[], None]) -> None:
    """Call ``callback`` once the consumer's change is committed: now, or inside ``consume_batch`` after
    its commit (once, however many events asked), so a wake-up never runs before the data it announces."""
    batch = _BATCH.get()
    if batch is None:
        callback()
    elif callback not in batch.after:
        batch.after.append(callback)


def consume_once(
    session_factory: sessionmaker[Session],
    inbox: Table,
    consumer: str,
    event: BusEvent,
    apply: Callable[[Session], None],
    *,
    now: datetime | None = None,
) -> bool:
    """Apply ``event`` for ``consumer`` unless it already was; False means a duplicate, nothing done.

    The inbox row and ``apply``'s changes commit together, and any exception rolls both back and
    propagates, so the bus delivers the event again and it is applied then. Inside ``consume_batch``
    they join the batch's transaction instead of one of their own.
    """
    received: Any = now or utc_now()
    with consumer_transaction(session_factory) as session:
        # ON CONFLICT DO NOTHING: a concurrent duplicate waits for the first to commit, then sees 0 rows.
        # On the session's connection (its transaction): nothing is pending in the session before an
        # event's first statement.
        connection = session.connection()
        dialect = connection.dialect.name
        if dialect == "sqlite":
            received = received.strftime(_SQLITE_DATETIME)  # as SQLAlchemy's DateTime stores it there
        cursor = connection.connection.cursor()
        cursor.execute(_inbox_sql(inbox, dialect), (consumer, event.event_id, received))
        inserted = cursor.fetchone()
        cursor.close()
        if inserted is None:
            return False  # nothing written; the transaction commits empty
        apply(session)
    return True
