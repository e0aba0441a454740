"""Database engines and sessions: one SQLite file per service per node, or one PostgreSQL schema per service."""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Select, create_engine, event, func, select, text
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.util import LRUCache

from services.common.settings import Settings

_SCHEMA_OK = re.compile(r"^[a-z_][a-z0-9_]*$")
# SQLite connections a service's engine keeps open: more than the threads of a process that may use
# one at once (Settings.grpc_workers, 16 by default, plus long polls and background loops). Each is
# a file handle and a page cache of its own (2 MB at most), filled only as it is used.
SQLITE_POOL_SIZE = 32
# Set by ``reading()``: the transactions this thread begins meanwhile only read.
_READING: ContextVar[bool] = ContextVar("lianxin_db_reading", default=False)
# In a SQLite connection's ``info`` (kept with the DB-API connection across pool checkouts): the
# ``PRAGMA query_only`` it was last given, so the pragma runs only when a transaction needs the other.
_QUERY_ONLY = "lianxin_query_only"
# In a PostgreSQL connection's pool record: when the pool last took it back (``_pg_checkout``).
_HANDED_BACK_AT = "lianxin_handed_back_at"
# A query takes a connection handed back this recently without pinging it first.
FRESH_FOR_READS_S = 10.0
F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)
# How long a writer waits for its turn in this process before it falls back to SQLite's own busy
# handler: as long as that handler's timeout, so a turn never taken back (a bug) costs a stall, not a hang.
WRITER_WAIT_S = 30.0


class WriterQueue:
    """The writers of one SQLite file in this process, one at a time, in line on a lock.

    SQLite lets one writer in at a time; the others wait in its busy handler, which sleeps 1, 2, 5,
    10, ... up to 100 ms between tries and does not notice the lock coming free meanwhile. Under a
    queue of writers (a city's exchange file with twenty counties pushing, the intake file under
    eight clients) the file's lock then sat free while every waiter slept, and a newcomer could
    take it ahead of them. Waiting here instead, a writer is woken the moment the one before it
    commits or rolls back. Other processes writing the file still meet SQLite's own lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holder: int | None = None  # id() of the DB-API connection whose transaction has the turn
        self._holder_thread: int | None = None  # the thread that began that transaction

    def enter(self, dbapi_connection: Any) -> None:
        if self._holder_thread == threading.get_ident() and self._lock.locked():
            # This thread's own open write transaction (another connection) has the turn: waiting
            # could only end in the timeouts (30 s here, then 30 s in SQLite's busy handler), since
            # the holder cannot commit while its thread waits. Fail now, as SQLite would after them:
            # a consumer batch then falls back to one transaction per event at once.
            raise sqlite3.OperationalError(
                "database is locked: this thread already has a write transaction open on the file"
            )
        if self._lock.acquire(timeout=WRITER_WAIT_S):
            self._holder = id(dbapi_connection)
            self._holder_thread = threading.get_ident()
        # else: the turn was never handed back; BEGIN IMMEDIATE waits in SQLite's busy handler as before

    def leave(self, dbapi_connection: Any) -> None:
        if self._holder is not None and self._holder == id(dbapi_connection):
            self._holder = None
            self._holder_thread = None
            self._lock.release()

    def busy(self) -> bool:
        return self._lock.locked()


_WRITER_QUEUES: dict[str, WriterQueue] = {}
_WRITER_QUEUES_LOCK = threading.Lock()


def writer_queue(url: str) -> WriterQueue | None:
    """The in-process writer queue of a SQLite file (None for an in-memory database or another backend):
    one per file, shared by every engine of the process that opens it."""
    if not url.startswith("sqlite") or ":memory:" in url or url.rstrip("/") in ("sqlite:", "sqlite+pysqlite:"):
        return None
    key = str(Path(url.split(":///", 1)[-1].split("?", 1)[0]).resolve())
    with _WRITER_QUEUES_LOCK:
        return _WRITER_QUEUES.setdefault(key, WriterQueue())


def _hand_back_turn_after(engine: Engine, queue: WriterQueue) -> None:
    """The writer's turn ends once SQLite has committed or rolled back (or the connection closed):
    the engine's commit and rollback events fire before the DB-API call, too early to let the next in."""
    dialect = engine.dialect

    def wrap(original: Callable[[Any], None]) -> Callable[[Any], None]:
        def ended(dbapi_connection: Any) -> None:
            try:
                original(dbapi_connection)
            finally:
                # The engine passes its pool's proxy, the pool the DB-API connection itself.
                queue.leave(getattr(dbapi_connection, "dbapi_connection", dbapi_connection))

        return ended

    for name in ("do_commit", "do_rollback", "do_close"):
        setattr(dialect, name, wrap(getattr(dialect, name)))


def _sqlite_begin(queue: WriterQueue | None) -> Callable[[Any], None]:
    """A SQLite engine's ``dialect.do_begin``: BEGIN, or BEGIN IMMEDIATE in the file's writer queue."""

    def begin(connection: Any) -> None:
        # IMMEDIATE takes the write lock up front: two concurrent read-then-write transactions
        # cannot both read and then deadlock on upgrade (SQLITE_BUSY without waiting).
        # Inside ``reading()`` a plain (deferred) BEGIN: a WAL reader takes no lock, so queries
        # neither wait for each other nor for writers; query_only makes a stray write fail.
        # With IMMEDIATE every page's query queued for the file's one write lock, polling in
        # the busy handler's sleeps of up to 100 ms (issue 17: inbox p99 4.7 s at 50 clients).
        # The pragma only when it changes: the connection keeps it, and a statement more on every
        # transaction was a measurable share of a consumer's one-event transaction.
        # This is the dialect's own ``do_begin`` (pysqlite's does nothing), not a "begin" event
        # running ``exec_driver_sql``: SQLAlchemy's execution of BEGIN (a context, cursor events, a
        # result) cost ~0.07 ms of every transaction, and with no connection event on the engine
        # SQLAlchemy skips its event dispatch around every statement too (issue 17: the case page's
        # three handlers 2.7-3.5 -> 2.0-2.4 ms). So add no engine event here without measuring.
        # A driver error is still raised as SQLAlchemy's wrapper (``_begin_impl`` wraps ``do_begin``).
        reads = _READING.get()
        dbapi_connection = connection.dbapi_connection  # ``connection``: the pool's proxy
        info = connection.info  # the pool record's, as the Connection's ``info`` is
        if info.get(_QUERY_ONLY) is not reads:
            dbapi_connection.execute(f"PRAGMA query_only={int(reads)}")
            info[_QUERY_ONLY] = reads
        if reads or queue is None:
            dbapi_connection.execute("BEGIN" if reads else "BEGIN IMMEDIATE")
            return
        queue.enter(dbapi_connection)
        try:
            dbapi_connection.execute("BEGIN IMMEDIATE")
        except BaseException:
            queue.leave(dbapi_connection)
            raise

    return begin


class SharedStatementsSQLiteDialect(SQLiteDialect_pysqlite):
    """pysqlite, with one compiled form of a statement for every SQLite engine of the process.

    SQLAlchemy keys its compiled-statement caches (the engine's, and each ORM mapper's for its
    flushes) by the dialect object, and every engine has a dialect of its own. A host runs ~60
    nodes of five services each, so every node compiled every statement again at its first cases
    (~50 ms of CPU a node, ~10 s over the Sichuan tree in its first seconds of load), and a mapper's
    cache (100 entries, shared by every engine) could not hold ~60 engines' flush statements at
    once. These dialects are alike by construction (the same class, the same SQLite library, the
    engine settings of ``make_engine``), so they compare equal and share ``SQLITE_STATEMENTS``;
    what differs per engine (its writer queue in ``do_begin``/``do_commit``) is not in a compiled
    statement.
    """

    supports_statement_cache = True

    def _alike(self) -> tuple[Any, ...]:
        return (type(self), self.dbapi.sqlite_version_info if self.dbapi else None, self.paramstyle)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SharedStatementsSQLiteDialect) and other._alike() == self._alike()

    def __hash__(self) -> int:
        return hash(self._alike())


registry.register("sqlite.lianxin", __name__, "SharedStatementsSQLiteDialect")
# The compiled statements of every SQLite engine of the process (see SharedStatementsSQLiteDialect):
# the five services' statements once, not once per node; an engine's own cache holds 500.
SQLITE_STATEMENTS: LRUCache[Any, Any] = LRUCache(2000)


def _shared_statements_url(url: str) -> str:
    """``url`` with the shared-statements dialect when it names pysqlite (the default SQLite driver)."""
    parsed = make_url(url)
    if parsed.drivername not in ("sqlite", "sqlite+pysqlite"):
        return url
    return parsed.set(drivername="sqlite+lianxin").render_as_string(hide_password=False)


def service_database_url(settings: Settings, service: str) -> str:
    """The URL a service of this node connects to; placeholders {node} and {service} are filled in."""
    if settings.database_url:
        return settings.database_url.format(node=settings.node, service=service)
    directory = Path(settings.data_dir) / settings.node
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory / f'{service}.db'}"


def make_engine(url: str, *, service: str, schema: str | None = None, **kwargs: Any) -> Engine:
    """An engine tuned for the backend.

    SQLite: WAL with synchronous=NORMAL (durable across process crashes, fast) and a busy timeout,
    because the api thread pool and the relay thread write to the same file.
    PostgreSQL: every connection's search_path is the service's own schema, so services sharing a
    database never see each other's tables.
    """
    if url.startswith("sqlite"):
        # A connection kept for each thread that may read at once (the 16 gRPC handler threads, long
        # polls, relay, timers): with QueuePool's default of 5 (+10 overflow), a checkout beyond five
        # opened a connection and closed it on return (PRAGMAs, SQLite's schema parsed again, an empty
        # page cache: 90–150 of them per 1,000 inbox pages at 50 clients), and a 16th waited for one.
        kwargs.setdefault("pool_size", SQLITE_POOL_SIZE)
        kwargs.setdefault("max_overflow", SQLITE_POOL_SIZE)
        engine = create_engine(
            _shared_statements_url(url),
            connect_args={"check_same_thread": False, "timeout": 30},
            execution_options={"compiled_cache": SQLITE_STATEMENTS},
            **kwargs,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # pysqlite's own transaction handling defers BEGIN; we want BEGIN IMMEDIATE semantics
            # for writers, so take control of BEGIN ourselves.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        queue = writer_queue(url)
        engine.dialect.do_begin = _sqlite_begin(queue)  # type: ignore[method-assign,assignment]  # this engine only
        if queue is not None:
            _hand_back_turn_after(engine, queue)
        return engine

    schema_name = schema or service
    if not _SCHEMA_OK.match(schema_name):
        raise ValueError(f"bad schema name {schema_name!r}")
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    engine = create_engine(url, **kwargs)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema_name}"'))
    _pg_checkout(engine)

    @event.listens_for(engine, "connect")
    def _pg_search_path(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute(f'SET search_path TO "{schema_name}"')
        cursor.close()
        dbapi_conn.commit()

    engine.dispose()  # the connection above was made before the listener; start clean
    return engine


@contextmanager
def reading() -> Iterator[None]:
    """Transactions begun inside only read: on SQLite a deferred BEGIN with ``PRAGMA query_only``
    (WAL readers never wait), instead of BEGIN IMMEDIATE's write lock. Nothing changes on PostgreSQL."""
    token = _READING.set(True)
    try:
        yield
    finally:
        _READING.reset(token)


def reading_now() -> bool:
    """True inside ``reading()``: nothing in this call writes, so a read may skip the ORM's identity
    map and autoflush (there is nothing pending to see)."""
    return _READING.get()


def read_only(method: F) -> F:
    """A query RPC (or function) whose transactions only read: it runs inside ``reading()``."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with reading():
            try:
                return method(*args, **kwargs)
            except DBAPIError as error:
                if not error.connection_invalidated:
                    raise
                # A connection that died since its last use (not pinged: ``_pg_checkout``). The
                # pool has let it go; the read runs again, on a connection that answers the ping.
                log.info("a query's connection had died; asked again", extra={"query": method.__qualname__})
            return method(*args, **kwargs)

    wrapper.lianxin_read_only = True  # type: ignore[attr-defined]  # GrpcServer runs it on its query threads
    return wrapper  # type: ignore[return-value]


def _pg_checkout(engine: Engine) -> None:
    """How a PostgreSQL connection is taken from the pool and given back: SQLAlchemy's
    ``pool_pre_ping``, except for a query on a connection used in the last ``FRESH_FOR_READS_S``, and
    a query's statements without a transaction block.

    The ping is a round trip at every checkout: on a busy node's case page (three reads, each its own
    checkout) 8 % of the node's CPU, and on a network a round trip of latency each. A connection
    handed back moments ago is almost always alive. When it is not (the server restarted in those
    seconds), the query fails with the connection invalidated and ``read_only`` runs it once more;
    a write is never run twice, so writers still ping at every checkout. A failed ping makes the pool
    take a new connection, as ``pool_pre_ping`` does.

    READ COMMITTED takes a snapshot per statement inside a block or not, so a query's BEGIN and
    ROLLBACK were two round trips for nothing (without them the console's inbox and case page served
    13–15 % more pages a second): inside ``reading()`` the connection is in autocommit, whether a Core
    ``read_transaction`` or an ORM session runs the query, and it is transactional again before the
    pool hands it to anyone else.
    """

    @event.listens_for(engine, "checkin")
    def _handed_back(dbapi_connection: Any, record: Any) -> None:
        record.info[_HANDED_BACK_AT] = time.monotonic()
        if dbapi_connection is not None and dbapi_connection.autocommit:
            dbapi_connection.autocommit = False

    @event.listens_for(engine, "checkout")
    def _taken(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        reads = _READING.get()
        handed_back = record.info.get(_HANDED_BACK_AT)
        if not (reads and handed_back is not None and time.monotonic() - handed_back < FRESH_FOR_READS_S):
            try:
                engine.dialect.do_ping(dbapi_connection)
            except engine.dialect.loaded_dbapi.Error as error:
                raise DisconnectionError(f"the ping failed: {error}") from error
        if reads:
            dbapi_connection.autocommit = True


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A query's read transaction on a Core connection from the engine's pool, rolled back at the end.

    It begins as ``reading()``'s transactions do (SQLite: a deferred BEGIN with ``query_only``) but
    builds no ORM Session: a session's construction, begin, connection lookup, rollback and close
    were ~13 % of the node's CPU for an inbox page (issue 17). For reads that run Core statements
    only; anything that needs the ORM keeps ``transaction()``."""
    with reading():
        connection = engine.connect()
        try:
            connection.begin()  # on PostgreSQL no BEGIN: a query's connection is in autocommit (_pg_checkout)
            yield connection
        finally:
            connection.close()  # rolls the transaction back and returns the connection to the pool


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any exception."""
    session = factory()
    try:
        with session.begin():
            yield session
    finally:
        session.close()


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


# A list's total_size counts at most this many matches; beyond it the total is -1 ("more than
# COUNT_LIMIT", PageResponse's "not computed"): a count that read every match grew with the stored
# history on each page asked (issue 17, the inbox and the reply board at 100,000 cases).
COUNT_LIMIT = 1000


def bounded_count(session: Session, query: Select[Any], limit: int = COUNT_LIMIT) -> int:
    """The number of rows ``query`` selects when at most ``limit``, else -1; reads at most ``limit`` + 1.

    ``query`` should carry the ORDER BY of the index its WHERE is a range of: PostgreSQL's generic
    plan of a bare LIMIT guesses a share of the table matches and reads it sequentially."""
    found = session.scalar(select(func.count()).select_from(query.limit(limit + 1).subquery())) or 0
    return -1 if found > limit else int(found)
