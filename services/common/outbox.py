"""Transactional outbox and idempotent inbox (DESIGN §4): events leave with the state change, once in effect.

A service writes its state change and its event row in one transaction (``append_event``). A
``Relay`` publishes unpublished rows in ``position`` order and marks them published; delivery is
at least once, so every consumer goes through ``consume_once`` (``services.common.inbox``), which
records the event id in the consumer's inbox in the same transaction as the consumer's own change.

Ordering. Consumers rely on order per case (versions), so a case's positions must commit in
order, or a relay could publish the case's position 11 before a slower transaction commits its
position 10. SQLite gives total order for free (``BEGIN IMMEDIATE`` serialises writers). On
PostgreSQL ``append_event`` takes an advisory transaction lock per (outbox, case): transactions of
one case commit one at a time from the append to the commit (put ``append_event`` last in the unit
of work to keep that window short), while different cases never wait for each other. A lower
position of another case that commits late is not lost: the relay selects unpublished rows, not
rows after a cursor, so the next run publishes it. Events without a case share one key.

One relay at a time. Two relays interleaving batches would break the order, and ``SKIP LOCKED``
would too, so a relay run holds a lease: ``pg_try_advisory_xact_lock`` on PostgreSQL (held for
the batch, which does not block writers), and an exclusive ``flock`` on a file beside the SQLite
database. SQLite deliberately does not hold its write lock while publishing: the in-process bus
runs consumers synchronously (a service consuming its own events would wait on itself), and under
eventlet a greenlet blocked in SQLite's busy handler stops the whole hub.

Migrations. Every service's first Alembic revision calls ``create_outbox_tables(op)`` (or creates
its whole ``metadata``, which already holds ``outbox_table(metadata)`` and ``inbox_table(metadata)``),
so all services get identical definitions; ``drop_outbox_tables(op)`` is the downgrade.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import select as io_select
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from prometheus_client import Counter, Gauge
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    bindparam,
    delete,
    func,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session, sessionmaker

from services.common.db import transaction
from services.common.service import BusEvent, utc_now

log = logging.getLogger(__name__)

OUTBOX_TABLE = "outbox"
INBOX_TABLE = "inbox"

OUTBOX_BACKLOG = Gauge("lianxin_outbox_backlog", "Outbox rows not yet published", ["service"])
OUTBOX_OLDEST_AGE = Gauge(
    "lianxin_outbox_oldest_age_seconds",
    "Age of the oldest unpublished outbox row (0 when empty)",
    ["service"],
)
OUTBOX_PUBLISHED = Counter("lianxin_outbox_published_total", "Outbox rows published", ["service"])
OUTBOX_PUBLISH_FAILURES = Counter(
    "lianxin_outbox_publish_failures_total", "Relay runs stopped by a failed publish", ["service"]
)

# SQLite needs exactly INTEGER for an autoincrement rowid; PostgreSQL gets a 64-bit sequence.
_POSITION_TYPE = BigInteger().with_variant(Integer(), "sqlite")


def outbox_table(metadata: MetaData) -> Table:
    """The outbox of one service, attached to the service's own ``metadata``."""
    return Table(
        OUTBOX_TABLE,
        metadata,
        # AUTOINCREMENT on SQLite: positions are never reused after pruning, so they can serve as
        # cursors (a plain rowid restarts below a deleted maximum).
        Column("position", _POSITION_TYPE, primary_key=True, autoincrement=True),
        Column("event_id", String(36), nullable=False, unique=True),
        Column("source", String(32), nullable=False),
        Column("event_type", String(64), nullable=False),
        Column("case_id", String(32), nullable=True),
        Column("body", LargeBinary, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("published_at", DateTime(timezone=True), nullable=True),
        # Serves the relay ("published_at IS NULL ORDER BY position") and pruning (published_at <).
        Index(f"ix_{OUTBOX_TABLE}_published_at_position", "published_at", "position"),
        sqlite_autoincrement=True,
    )


def inbox_table(metadata: MetaData) -> Table:
    """Event ids a consumer has applied; the primary key makes a second application impossible."""
    return Table(
        INBOX_TABLE,
        metadata,
        Column("consumer", String(64), nullable=False),
        Column("event_id", String(36), nullable=False),
        Column("received_at", DateTime(timezone=True), nullable=False),
        PrimaryKeyConstraint("consumer", "event_id", name=f"pk_{INBOX_TABLE}"),
        Index(f"ix_{INBOX_TABLE}_received_at", "received_at"),
    )


def create_outbox_tables(op: Any) -> None:
    """Create the outbox and inbox inside an Alembic revision (``op`` is ``alembic.op``)."""
    metadata = MetaData()
    outbox_table(metadata)
    inbox_table(metadata)
    metadata.create_all(op.get_bind())


def drop_outbox_tables(op: Any) -> None:
    metadata = MetaData()
    outbox_table(metadata)
    inbox_table(metadata)
    metadata.drop_all(op.get_bind())


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything we store is UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _engine_of(session_factory: sessionmaker[Session]) -> Engine:
    with session_factory() as session:
        return session.get_bind().engine


def _pg_lock_key(purpose: str, table: Table, case_id: str | None = None) -> Any:
    # One key per (purpose, schema, table[, case]); current_schema() is the service's schema (search_path).
    return func.hashtextextended(
        func.concat(f"lianxin.outbox.{purpose}.", func.current_schema(), f".{table.name}.", case_id or ""), 0
    )


def append_event(
    session: Session, table: Table, event: BusEvent, case_id: str | None, *, now: datetime | None = None
) -> None:
    """Record ``event`` in the outbox inside the caller's business transaction (call it last)."""
    if session.get_bind().dialect.name == "postgresql":
        # Held to commit: a case's positions then commit in order, which keeps the relay in order
        # per case (what consumers rely on: versions per case). Events of different cases do not
        # wait for each other; the relay picks up a late-committing lower position on its next run
        # because it selects unpublished rows, not rows after a cursor. Events without a case
        # share one key and stay in strict order.
        session.execute(select(func.pg_advisory_xact_lock(_pg_lock_key("append", table, case_id))))
    row = {
        "event_id": event.event_id,
        "source": event.source,
        "event_type": event.event_type,
        "case_id": case_id,
        "body": event.body,
        "created_at": now or utc_now(),
    }
    session.connection().execute(_append_insert(table), row)


_APPEND_INSERTS: dict[int, tuple[Table, Any]] = {}


def _append_insert(table: Table) -> Any:
    """The outbox's insert with bound parameters, built once per table: every event a service records
    runs it, and composing ``insert().values(...)`` on each call cost more than executing it."""
    built = _APPEND_INSERTS.get(id(table))
    if built is None or built[0] is not table:  # (a table of a test may reuse a freed table's id)
        columns = ("event_id", "source", "event_type", "case_id", "body", "created_at")
        built = _APPEND_INSERTS[id(table)] = (table, table.insert().values({c: bindparam(c) for c in columns}))
    return built[1]


def append_events(
    session: Session,
    table: Table,
    events: Sequence[tuple[BusEvent, str | None]],
    *,
    now: datetime | None = None,
) -> None:
    """``append_event`` for many ``(event, case_id)`` pairs: one lock statement and one executemany insert.

    Rows are inserted in the given order, so a case's events keep their order. On PostgreSQL the
    same per-case advisory locks as ``append_event`` are taken, in sorted case order in a single
    statement: two bulk writers touching overlapping cases then queue instead of deadlocking.
    """
    if not events:
        return
    if session.get_bind().dialect.name == "postgresql":
        keys = sorted({case_id or "" for _, case_id in events})
        # The key expression must hash exactly like _pg_lock_key("append", table, case_id).
        session.execute(
            text(
                "SELECT count(pg_advisory_xact_lock("
                "hashtextextended(concat(CAST(:prefix AS text), current_schema(), CAST(:infix AS text), u.c), 0)))"
                " FROM (SELECT c FROM unnest(CAST(:keys AS text[])) WITH ORDINALITY AS k(c, i) ORDER BY i) AS u"
            ),
            {"prefix": "lianxin.outbox.append.", "infix": f".{table.name}.", "keys": keys},
        )
    created_at = now or utc_now()
    session.execute(
        table.insert(),
        [
            {
                "event_id": event.event_id,
                "source": event.source,
                "event_type": event.event_type,
                "case_id": case_id,
                "body": event.body,
                "created_at": created_at,
            }
            for event, case_id in events
        ],
    )


# --------------------------------------------------------------------------- LISTEN/NOTIFY (PostgreSQL)

# A statement-level trigger on every service's outbox notifies the commit's listeners: the channel is
# per schema and table (NOTIFY is per database), hashed to fit PostgreSQL's 63-byte identifiers. NOTIFY
# is delivered at commit, only if the transaction commits, once per channel and transaction.
NOTIFY_TRIGGER = "lianxin_outbox_notify"
_NOTIFY_FUNCTION_SQL = f"""
CREATE OR REPLACE FUNCTION {NOTIFY_TRIGGER}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('lianxin_outbox_' || md5(TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME), '');
  RETURN NULL;
END $$
"""


def outbox_channel(schema: str, table: str = OUTBOX_TABLE) -> str:
    """The NOTIFY channel of ``schema.table`` (what the trigger computes with md5)."""
    return "lianxin_outbox_" + hashlib.md5(f"{schema}.{table}".encode(), usedforsecurity=False).hexdigest()


def install_outbox_notify(conn: Connection, table: str = OUTBOX_TABLE) -> bool:
    """Create the NOTIFY trigger on the current schema's outbox if it has none; True if created.

    Called by ``migrations.upgrade`` after every service's revisions (idempotent, under the migration
    lock), so each service's outbox has it whatever revision created the table. SQLite: nothing.
    """
    if conn.dialect.name != "postgresql":
        return False
    exists = conn.execute(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": table}).scalar_one()
    if not exists:
        return False
    present = conn.execute(
        text("SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(:t) AND tgname = :name"),
        {"t": table, "name": NOTIFY_TRIGGER},
    ).scalar_one()
    if present:
        return False
    conn.exec_driver_sql(_NOTIFY_FUNCTION_SQL)
    conn.exec_driver_sql(
        f'CREATE TRIGGER {NOTIFY_TRIGGER} AFTER INSERT ON "{table}"'
        f" FOR EACH STATEMENT EXECUTE FUNCTION {NOTIFY_TRIGGER}()"
    )
    return True


class OutboxListener:
    """LISTENs on an outbox's channel over a connection of its own: ``wait`` returns when a commit
    inserted rows into the outbox (or the timeout passed).

    It waits with ``select`` on the connection's socket, so in a worker patched by eventlet only the
    waiting greenlet waits. A lost connection raises from ``wait``; open a new listener then (commits
    made meanwhile are found by the relay pass the caller runs after connecting).
    """

    def __init__(self, engine: Engine, table: str = OUTBOX_TABLE) -> None:
        import psycopg

        with engine.connect() as conn:
            schema = conn.execute(text("SELECT current_schema()")).scalar_one()
        self.channel = outbox_channel(schema, table)
        conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._conn = psycopg.connect(conninfo, autocommit=True)
        self._conn.execute(f"LISTEN {self.channel}")

    def wait(self, timeout_s: float | None) -> bool:
        """True when notified (all pending notifications are consumed), False after ``timeout_s``."""
        pgconn = self._conn.pgconn
        if self._drain():
            return True
        ready, _, _ = io_select.select([pgconn.socket], [], [], timeout_s)
        if not ready:
            return False
        return self._drain()

    def _drain(self) -> bool:
        pgconn = self._conn.pgconn
        pgconn.consume_input()  # raises when the connection is gone
        got = False
        while pgconn.notifies() is not None:
            got = True
        return got

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()


# Delivers events in order; returns how many from the start were delivered in full, and the error that
# stopped it there (None when all were).
PublishMany = Callable[[Sequence[BusEvent]], tuple[int, Exception | None]]


class _OutboxRow(NamedTuple):
    position: int
    event_id: str
    source: str
    event_type: str
    body: bytes


class Relay:
    """Publishes one service's outbox in order; run it from one loop or timer per process."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        table: Table,
        publish: Callable[[BusEvent], None],
        batch_size: int = 500,
        *,
        service: str = "unknown",
        clock: Callable[[], datetime] = utc_now,
        publish_many: PublishMany | None = None,
    ) -> None:
        self._session_factory = session_factory
        self._table = table
        self._publish = publish
        # An in-process bus takes a run's rows at once (each consumer one transaction for them).
        self._publish_many = publish_many
        self.batch_size = batch_size
        self.service = service
        self._clock = clock
        # The service's series exist from the start (0), so increase() counts the first publish.
        for metric in (OUTBOX_PUBLISHED, OUTBOX_PUBLISH_FAILURES, OUTBOX_BACKLOG, OUTBOX_OLDEST_AGE):
            metric.labels(service)
        engine = self._engine = _engine_of(session_factory)
        self._postgres = engine.dialect.name == "postgresql"
        database = engine.url.database
        self._lock_path = None if self._postgres or not database or database == ":memory:" else f"{database}.relay-lock"
        self._thread_lock = threading.Lock()  # in-memory SQLite: one process, so a thread lock is the lease
        self.last_error: BaseException | None = None
        # SQLite file: a pass first asks a read-only question on a connection of its own ("anything
        # unpublished?") and stops there when the answer is no. Every commit of the node wakes every
        # relay of the node, and most find their outbox empty: without the question each paid the
        # lease file, a write transaction and its commit (the biggest share of a hosted node's relay
        # cost at a steady case rate). A row committed after the question wakes the relay again.
        self._peek_path = None if self._postgres or not database or database == ":memory:" else database
        self._peek_conn: sqlite3.Connection | None = None
        self._peek_lock = threading.Lock()
        # Built once: a relay runs after every burst of commits, and building and cache-keying these
        # statements on each run cost more CPU than executing them.
        t = table
        # SQLite: through SQLAlchemy, in two short transactions (see _run_once_sqlite).
        self._batch = (
            select(t.c.position, t.c.event_id, t.c.source, t.c.event_type, t.c.body)
            .where(t.c.published_at.is_(None))
            .order_by(t.c.position)
            .limit(bindparam("batch_size", type_=Integer))
        )
        self._mark = (
            update(t)
            .where(t.c.position.in_(bindparam("positions", expanding=True)))
            .values(published_at=bindparam("at"))
        )
        # PostgreSQL: one transaction as plain SQL on the pooled psycopg connection. SQLAlchemy's
        # per-statement work (begin, execute, result) cost more than the round trips, and under
        # load the relay passes up to fifty times a second beside the api threads. The lock key
        # hashes exactly as _pg_lock_key("relay", table) would.
        name = t.name
        self._pg_lease_sql = (
            "SELECT pg_try_advisory_xact_lock(hashtextextended("
            f"concat('lianxin.outbox.relay.', current_schema(), '.{name}.', ''), 0))"
        )
        self._pg_batch_sql = (
            f"SELECT position, event_id, source, event_type, body FROM {name}"
            " WHERE published_at IS NULL ORDER BY position LIMIT %s"
        )
        self._pg_mark_sql = f"UPDATE {name} SET published_at = %s WHERE position = ANY(%s)"
        self._peek_sql = f"SELECT 1 FROM {name} WHERE published_at IS NULL LIMIT 1"
        self._sqlite_batch_sql = self._pg_batch_sql.replace("%s", "?")

    def run_once(self) -> int:
        """Publish up to ``batch_size`` rows in order; returns how many were published.

        A failing publish stops the run at that row (logged, kept in ``last_error``): the rows
        before it are marked, the rest wait for the next run. Returns 0 when another relay holds
        the lease.
        """
        if self._postgres:
            return self._run_once_postgres()
        return self._run_once_sqlite()

    def _select_batch(self, conn: Connection) -> Sequence[Any]:
        return conn.execute(self._batch, {"batch_size": self.batch_size}).all()

    def _publish_in_order(self, rows: Sequence[Any]) -> list[int]:
        if self._publish_many is not None and len(rows) > 1:
            events = [BusEvent(r.event_id, r.source, r.event_type, r.body) for r in rows]
            delivered, error = self._publish_many(events)
            if error is not None:
                self._failed(error, rows[delivered])
            else:
                self.last_error = None
            return [row.position for row in rows[:delivered]]
        done: list[int] = []
        for row in rows:
            event = BusEvent(event_id=row.event_id, source=row.source, event_type=row.event_type, body=row.body)
            try:
                self._publish(event)
            except Exception as exc:
                self._failed(exc, row)
                break
            done.append(row.position)
        else:
            self.last_error = None
        return done

    def _failed(self, exc: BaseException, row: Any) -> None:
        self.last_error = exc
        OUTBOX_PUBLISH_FAILURES.labels(self.service).inc()
        log.warning(
            "outbox publish failed; will retry from this row",
            exc_info=exc,
            extra={"service": self.service, "position": row.position, "event_id": row.event_id},
        )

    def _mark_published(self, conn: Connection, positions: list[int]) -> None:
        if positions:
            conn.execute(self._mark, {"positions": positions, "at": self._clock()})

    def _run_once_postgres(self) -> int:
        # The lease is a transaction-level lock: released by the commit, and by PostgreSQL if we
        # crash. The batch is a statement of its own, after the lease: a statement's snapshot is
        # taken when it starts, so a select that took the lease itself could still see rows the
        # previous holder marked and committed a moment before, and publish them again.
        fairy = self._engine.raw_connection()  # the service pool's checkout ping finds a dropped connection
        try:
            cursor = fairy.cursor()
            cursor.execute(self._pg_lease_sql)
            lease = cursor.fetchone()
            done: list[int] = []
            if lease is not None and lease[0]:
                cursor.execute(self._pg_batch_sql, (self.batch_size,))
                done = self._publish_in_order([_OutboxRow(*row) for row in cursor.fetchall()])
            if done:
                cursor.execute(self._pg_mark_sql, (self._clock(), done))
            cursor.close()
            fairy.commit()
        except BaseException:
            fairy.invalidate()  # a half-done transaction or a dead connection: never back to the pool
            raise
        finally:
            fairy.close()
        OUTBOX_PUBLISHED.labels(self.service).inc(len(done))
        return len(done)

    def _nothing_pending(self) -> bool:
        """SQLite file: True when the outbox has no unpublished row (one read, no lease, no write lock)."""
        rows = self._read(self._peek_sql, ())
        return rows is not None and not rows

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[Any] | None:
        """SQLite file: ``sql``'s rows on the relay's own connection; None without one (or on an error:
        the caller falls back to the engine, which reports what is wrong)."""
        if self._peek_path is None:
            return None
        with self._peek_lock:
            try:
                if self._peek_conn is None:
                    # Autocommit reads on WAL: each sees every commit made before it, never blocks a writer.
                    self._peek_conn = sqlite3.connect(
                        self._peek_path, timeout=30, isolation_level=None, check_same_thread=False
                    )
                return self._peek_conn.execute(sql, params).fetchall()
            except sqlite3.Error:
                self.close()
                return None

    def close(self) -> None:
        """Release the relay's own SQLite connection (the next pass opens it again if needed)."""
        conn, self._peek_conn = self._peek_conn, None
        if conn is not None:
            conn.close()

    def _run_once_sqlite(self) -> int:
        if self._nothing_pending():
            return 0
        with self._sqlite_lease() as leased:
            if not leased:
                return 0
            # The batch is read outside any write transaction (after the lease, so what the previous
            # holder marked is seen), then marked in one short transaction; the lease keeps other
            # relays out. Through the engine only where the relay has no connection of its own.
            found = self._read(self._sqlite_batch_sql, (self.batch_size,))
            if found is not None:
                rows: Sequence[Any] = [_OutboxRow(*row) for row in found]
            else:
                with self._engine.begin() as conn:
                    rows = self._select_batch(conn)
            if not rows:
                return 0
            done = self._publish_in_order(rows)
            if done:
                with self._engine.begin() as conn:
                    self._mark_published(conn, done)
        OUTBOX_PUBLISHED.labels(self.service).inc(len(done))
        return len(done)

    @contextlib.contextmanager
    def _sqlite_lease(self) -> Iterator[bool]:
        if not self._thread_lock.acquire(blocking=False):
            yield False
            return
        try:
            if self._lock_path is None:
                yield True
                return
            # flock is per open file, so it excludes other threads' relays and other processes
            # alike, and the kernel releases it if this process dies.
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    yield False
                    return
                yield True
            finally:
                os.close(fd)  # closing the descriptor releases the flock
        finally:
            self._thread_lock.release()

    def backlog(self) -> tuple[int, float]:
        """(unpublished rows, age in seconds of the oldest one); also updates the gauges."""
        t = self._table
        with self._session_factory() as session:
            count, oldest = session.execute(
                select(func.count(), func.min(t.c.created_at)).where(t.c.published_at.is_(None))
            ).one()
        age = max(0.0, (self._clock() - _aware(oldest)).total_seconds()) if oldest is not None else 0.0
        OUTBOX_BACKLOG.labels(self.service).set(count)
        OUTBOX_OLDEST_AGE.labels(self.service).set(age)
        return int(count), age

    def prune(self, older_than: timedelta) -> int:
        """Delete rows published more than ``older_than`` ago; returns how many went."""
        t = self._table
        cutoff = self._clock() - older_than
        with transaction(self._session_factory) as session:
            result = session.execute(delete(t).where(t.c.published_at.is_not(None), t.c.published_at < cutoff))
        return int(getattr(result, "rowcount", 0) or 0)
