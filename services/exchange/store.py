"""exchange's persistence: the up-log, cursors, replicas, the outbox, ownership epochs and the down-queue
(SQLAlchemy lives here; the quarantine and the read-only queries are in ``store_reads``).

``SqlExchangeUnitOfWork`` is one transaction and holds no rules: ``handlers`` decides, this writes.
``ExchangeStore`` is the exchange a node runs: the handlers over this unit of work.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from types import TracebackType

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from services.common.db import reading
from services.common.outbox import append_event
from services.common.regions import RegionTree
from services.common.service import BusEvent
from services.exchange import domain
from services.exchange.bulk import AsSet, Bulk
from services.exchange.handlers import Exchange
from services.exchange.models import case_epoch, down_queue, inbox, link_cursor, outbox, replica, up_log
from services.exchange.ports import COMMAND, ENVELOPE, ExchangeDeps, Replica, UpRow
from services.exchange.store_reads import ExchangeReads, insert_or_skip

_UP_LOG_COLUMNS = (
    "event_id",
    "case_id",
    "case_sequence",
    "version",
    "event_type",
    "origin_node",
    "body",
    "created_at",
    "kind",
)
_REPLICA_COLUMNS = (
    "event_id",
    "case_id",
    "version",
    "event_type",
    "origin_node",
    "owner_node",
    "owner_epoch",
    "child_node",
    "case_sequence",
    "body",
    "received_at",
)


# The link cursors' statements (valid on both databases). The position never moves back: the larger of the
# stored and the given one, as ``domain.advance_cursor``.
_LOCK_CURSOR_SQL = (
    "INSERT INTO link_cursor (peer, kind, position, token, last_contact) VALUES (?, ?, 0, '', NULL)"
    " ON CONFLICT (peer, kind) DO UPDATE SET position = link_cursor.position RETURNING position"
)
_CURSOR_POSITION_SQL = "SELECT position FROM link_cursor WHERE peer = ? AND kind = ?"
_SAVE_CURSOR_SQL = (
    "INSERT INTO link_cursor (peer, kind, position, token, last_contact) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (peer, kind) DO UPDATE SET position = CASE WHEN excluded.position > link_cursor.position"
    " THEN excluded.position ELSE link_cursor.position END, last_contact = excluded.last_contact"
    " RETURNING position"
)
_SAVE_CURSOR_TOKEN_SQL = _SAVE_CURSOR_SQL.replace(
    "last_contact = excluded.last_contact", "token = excluded.token, last_contact = excluded.last_contact"
)


# What a child's push is judged against (``load_ledgers``), tagged: i = an event id already stored,
# r = the last sequence stored per case from the child, s = the last one an operator discarded,
# e = the known owner epoch per case.
_LEDGERS_SQL = (
    "SELECT 'i', event_id, NULL FROM replica WHERE event_id {}"
    " UNION ALL SELECT 'r', case_id, max(case_sequence) FROM replica WHERE child_node {} AND case_id {}"
    " GROUP BY case_id"
    " UNION ALL SELECT 's', case_id, max(case_sequence) FROM sequence_skip WHERE child_node {} AND case_id {}"
    " GROUP BY case_id"
    " UNION ALL SELECT 'e', case_id, owner_epoch FROM case_epoch WHERE case_id {}"
)


class SqlExchangeUnitOfWork(ExchangeReads):
    """One transaction of exchange's tables (``ports.ExchangeUnitOfWork``); rolled back unless committed.

    ``queued_down`` is called after the commit with the children something was queued down for:
    only then may their long polls answer (earlier they would not see the rows).
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        node: str,
        clock: Callable[[], datetime],
        queued_down: Callable[..., None] = lambda *children: None,
        reads: bool = False,
    ) -> None:
        self._sf = session_factory
        self._reads = reads
        self._node = node
        self._clock = clock
        self._queued_down = queued_down
        self._children: set[str] = set()
        self._session: Session | None = None
        self._bulk: Bulk | None = None

    @property
    def session(self) -> Session:
        if self._session is None:
            self._session = self._sf()
            self._session.begin()
            if self._reads:
                with reading():
                    self._session.connection()  # begins now: on SQLite a deferred, query-only transaction
        return self._session

    def bulk(self) -> Bulk:
        """Raw statements on this transaction's connection (made once: finding the connection has a cost)."""
        if self._bulk is None:
            self._bulk = Bulk(self.session)
        return self._bulk

    def __enter__(self) -> SqlExchangeUnitOfWork:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            self._session.close()  # rolls back what was not committed
            self._session = None
        self._bulk = None
        self._children.clear()

    def commit(self) -> None:
        if self._session is None:
            return
        self._session.commit()
        self._bulk = None  # the session's next transaction may take another connection
        children, self._children = self._children, set()
        self._queued_down(*sorted(children))

    # ------------------------------------------------------------------ cursors

    def lock_cursor(self, peer: str, kind: str) -> int:
        # One statement: created if missing, else a no-op update that locks the row to the commit (a
        # retried push racing the original waits here, then reads what the original stored).
        row = self.bulk().rows(_LOCK_CURSOR_SQL, peer, kind)
        return int(row[0][0])

    def cursor_position(self, peer: str, kind: str) -> int:
        found = self.bulk().rows(_CURSOR_POSITION_SQL, peer, kind)
        return int(found[0][0]) if found else 0

    def save_cursor(self, peer: str, kind: str, *, position: int | None = None, token: str | None = None) -> int:
        """Store a cursor that never moves back (``domain.advance_cursor``, in the upsert) with the contact
        time; one statement, built once (a link saves its cursor after every push it sends or takes)."""
        bulk = self.bulk()
        now = bulk.moment(link_cursor, "last_contact", self._clock())
        if token is None:
            row = bulk.rows(_SAVE_CURSOR_SQL, peer, kind, position or 0, "", now)
        else:
            row = bulk.rows(_SAVE_CURSOR_TOKEN_SQL, peer, kind, position or 0, token, now)
        return int(row[0][0])

    # ------------------------------------------------------------------ up-log

    def append_up(self, rows: Sequence[UpRow], *, fresh_ids: set[str] | None = None) -> list[UpRow]:
        """Append the rows not yet on the up-log, numbering each case's events; returns the ones appended.

        This is the up-log's only writer of envelopes. On PostgreSQL it first takes a transaction
        advisory lock per case (sorted, one statement; SQLite's BEGIN IMMEDIATE already serialises
        writers) and only then reads the last numbers (the log's highest per case) and checks the
        log for the event ids, so a concurrent append of the same case waits, sees what was
        committed, and never reuses a number or burns one. ``fresh_ids``: event ids the caller knows
        are not on the log (a child's replicas just judged new: only that link brings them), not looked up.
        """
        if not rows:
            return []
        session = self.session
        bulk = self.bulk()
        cases = sorted({r.case_id for r in rows})
        if bulk.postgres:
            _lock_log_order(session)
            session.execute(
                text(
                    "SELECT count(pg_advisory_xact_lock("
                    "hashtextextended(concat(CAST(:prefix AS text), current_schema(), u.c), 0)))"
                    " FROM (SELECT c FROM unnest(CAST(:keys AS text[])) WITH ORDINALITY AS k(c, i) ORDER BY i) AS u"
                ),
                {"prefix": "lianxin.exchange.up_log.", "keys": cases},
            )
        # The last number per case is the log's own (the partial unique index on (case, sequence) serves it).
        last = {
            case_id: int(number)
            for case_id, number in bulk.rows(
                f"SELECT case_id, max(case_sequence) FROM up_log WHERE kind = '{ENVELOPE}' AND case_id {{}}"
                " GROUP BY case_id",
                lists=[cases],
            )
        }
        unknown = [r.event_id for r in rows if fresh_ids is None or r.event_id not in fresh_ids]
        present = (
            {row[0] for row in bulk.rows("SELECT event_id FROM up_log WHERE event_id {}", lists=[unknown])}
            if unknown
            else set()
        )
        fresh: list[UpRow] = []
        for row in rows:
            if row.event_id not in present:
                present.add(row.event_id)
                fresh.append(row)
        if not fresh:
            return []
        numbers = domain.number_case_events([r.case_id for r in fresh], last)
        now = self._clock()
        bulk.insert(
            up_log,
            _UP_LOG_COLUMNS,
            [
                (r.event_id, r.case_id, n, r.version, r.event_type, r.origin_node, r.body, now, ENVELOPE)
                for r, n in zip(fresh, numbers, strict=True)
            ],
        )
        return fresh

    def append_up_command(self, hop_id: str, case_id: str, body: bytes) -> bool:
        session = self.session
        if session.get_bind().dialect.name == "postgresql":
            _lock_log_order(session)
        inserted = session.execute(
            insert_or_skip(session, up_log)
            .values(
                event_id=hop_id,
                case_id=case_id[:64],
                case_sequence=0,
                version=0,
                event_type=COMMAND,
                origin_node=self._node,
                body=body,
                created_at=self._clock(),
                kind=COMMAND,
            )
            .on_conflict_do_nothing()
            .returning(up_log.c.position)
        ).scalar_one_or_none()
        return inserted is not None

    # ------------------------------------------------------------------ what a child pushed

    def load_ledgers(
        self, child: str, events: Sequence[domain.InboundEvent]
    ) -> tuple[dict[str, domain.CaseLedger], set[str]]:
        """What this node holds for the batch's cases (from ``child``'s link) and which event ids it stores."""
        bulk = self.bulk()
        cases = sorted({e.case_id for e in events if e.case_id})
        ids = [e.event_id for e in events if e.event_id]
        ledgers = {case_id: domain.CaseLedger() for case_id in cases}
        if not cases:
            stored = bulk.rows("SELECT event_id FROM replica WHERE event_id {}", lists=[ids]) if ids else []
            return ledgers, {row[0] for row in stored}
        # One statement for the four questions (each a statement before): inside the push's write
        # transaction every statement hands the GIL back and waits for it again, and in a saturated
        # host that wait, not SQLite, was most of how long a push held the database's write lock.
        # (The child is an IN list of one so every parameter is a list, in the statement's order.)
        stored_ids: set[str] = set()
        skipped: dict[str, int] = {}
        # (An empty list of ids is sent as one id no event has: PostgreSQL cannot type an empty array.)
        # The known epochs as a set (bulk.AsSet): an unanalysed case_epoch table was scanned against
        # the whole array per row, 25 ms of a 500-event push on PostgreSQL.
        lists: list[Sequence[str] | AsSet] = [ids or ["\x00"], [child], cases, [child], cases, AsSet(cases)]
        for kind, case_id, number in bulk.rows(_LEDGERS_SQL, lists=lists):
            if kind == "i":
                stored_ids.add(case_id)  # an event id
            elif kind == "r":
                ledgers[case_id].last_sequence = int(number)
            elif kind == "s":
                skipped[case_id] = int(number)
            else:
                ledgers[case_id].known_epoch = int(number)
        # A place an operator discarded counts as passed (domain.judge_discard).
        for case_id, last in skipped.items():
            ledgers[case_id].last_sequence = max(ledgers[case_id].last_sequence or 0, last)
        # The stored event at a sequence matters only at or below the last one (duplicate or conflict).
        behind = {
            (e.case_id, e.case_sequence)
            for e in events
            if e.case_id in ledgers and e.case_sequence <= (ledgers[e.case_id].last_sequence or 0)
        }
        if behind:
            rows = bulk.rows(
                "SELECT case_id, case_sequence, event_id FROM replica"
                " WHERE child_node = ? AND case_id {} AND case_sequence {}",
                child,
                lists=[sorted({c for c, _ in behind}), sorted({n for _, n in behind})],
            )
            for case_id, number, event_id in rows:
                if (case_id, int(number)) in behind:
                    ledgers[case_id].events_at[int(number)] = event_id
        return ledgers, stored_ids

    def store_replicas(self, child: str, replicas: Sequence[Replica], now: datetime) -> None:
        rows = []
        for r in replicas:
            e = r.event
            rows.append(
                (
                    e.event_id,
                    e.case_id,
                    e.version,
                    e.event_type,
                    e.origin_node,
                    e.owner_node,
                    e.owner_epoch,
                    child,
                    e.case_sequence,
                    r.body,
                    now,
                )
            )
        self.bulk().insert(replica, _REPLICA_COLUMNS, rows)

    # ------------------------------------------------------------------ ownership and the outbox

    def note_epochs(self, epochs: dict[str, tuple[int, str]]) -> None:
        self.bulk().insert(
            case_epoch,
            ("case_id", "owner_epoch", "owner_node"),
            [(c, e, o) for c, (e, o) in sorted(epochs.items())],
            suffix="ON CONFLICT (case_id) DO UPDATE SET owner_epoch = excluded.owner_epoch,"
            " owner_node = excluded.owner_node WHERE case_epoch.owner_epoch < excluded.owner_epoch",
        )

    def known_owner(self, case_id: str) -> tuple[int, str] | None:
        row = self.session.execute(
            select(case_epoch.c.owner_epoch, case_epoch.c.owner_node).where(case_epoch.c.case_id == case_id)
        ).one_or_none()
        return (int(row[0]), row[1]) if row is not None else None

    def known_epoch(self, case_id: str) -> int | None:
        known = self.session.execute(
            select(case_epoch.c.owner_epoch).where(case_epoch.c.case_id == case_id)
        ).scalar_one_or_none()
        return int(known) if known is not None else None

    def publish(self, events: Sequence[tuple[str, str, str, bytes]], now: datetime) -> None:
        """``services.common.outbox.append_events`` for (event id, type, case, body) rows, in one statement.

        On PostgreSQL it takes the same per-case advisory locks as ``append_event`` (the key below
        must hash exactly like ``outbox._pg_lock_key("append", outbox, case_id)``), so the relay keeps
        each case in order while other writers append to the same outbox.
        """
        if not events:
            return
        session = self.session
        bulk = self.bulk()
        if bulk.postgres:
            session.execute(
                text(
                    "SELECT count(pg_advisory_xact_lock(hashtextextended("
                    "concat(CAST(:prefix AS text), current_schema(), CAST(:infix AS text), u.c), 0)))"
                    " FROM (SELECT c FROM unnest(CAST(:keys AS text[])) WITH ORDINALITY AS k(c, i) ORDER BY i) AS u"
                ),
                {
                    "prefix": "lianxin.outbox.append.",
                    "infix": f".{outbox.name}.",
                    "keys": sorted({c for _, _, c, _ in events}),
                },
            )
        bulk.insert(
            outbox,
            ("event_id", "source", "event_type", "case_id", "body", "created_at"),
            [(event_id, "exchange", event_type, case_id, body, now) for event_id, event_type, case_id, body in events],
        )

    def publish_one(self, event_id: str, event_type: str, case_id: str, body: bytes) -> None:
        append_event(
            self.session,
            outbox,
            BusEvent(event_id=event_id, source="exchange", event_type=event_type, body=body),
            case_id,
        )

    def first_delivery(self, consumer: str, item_id: str) -> bool:
        session = self.session
        first = session.execute(
            insert_or_skip(session, inbox)
            .values(consumer=consumer, event_id=item_id, received_at=self._clock())
            .on_conflict_do_nothing()
            .returning(inbox.c.event_id)
        ).scalar_one_or_none()
        return first is not None

    # ------------------------------------------------------------------ down

    def enqueue_down(self, child: str, item_id: str, kind: str, body: bytes) -> None:
        session = self.session
        self._children.add(child)
        if session.get_bind().dialect.name == "postgresql":
            _lock_log_order(session)  # a child's PullDown reads positions too
        session.execute(
            insert_or_skip(session, down_queue)
            .values(child_node=child, item_id=item_id, kind=kind, body=body, created_at=self._clock())
            .on_conflict_do_nothing()
        )


class ExchangeStore(Exchange):
    """The exchange of one node over SQL: ``handlers.Exchange`` with ``SqlExchangeUnitOfWork``.

    What app.py, the operator commands and the benches build; every public method is one use case.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        node: str,
        regions: RegionTree,
        clock: Callable[[], datetime],
        notify: Callable[[], None] = lambda: None,
        wake_link: Callable[[], None] = lambda: None,
    ) -> None:
        def unit_of_work() -> SqlExchangeUnitOfWork:
            return SqlExchangeUnitOfWork(session_factory, node=node, clock=clock, queued_down=self.down_changes.bump)

        def read_only() -> SqlExchangeUnitOfWork:
            return SqlExchangeUnitOfWork(session_factory, node=node, clock=clock, reads=True)

        super().__init__(
            unit_of_work,
            ExchangeDeps(node=node, regions=regions, clock=clock),
            notify=notify,
            wake_link=wake_link,
            read_uow=read_only,
        )


def _lock_log_order(session: Session) -> None:
    """On PostgreSQL, one writer of the up-log or the down-queue at a time per node, until its commit.

    The links read both as ``position > cursor``. A position is drawn at insert and becomes
    visible at commit, so two writers of different cases (a child's push and a local event, say)
    could commit out of position order; the link would read and acknowledge the later position and
    skip the earlier one for good (seen: a county case's first events never reached the province).
    Holding this lock from before the insert until the commit makes positions visible in order.
    One key for both logs, so a transaction writing both cannot deadlock with another (advisory
    locks are re-entrant within a session). SQLite's BEGIN IMMEDIATE already serialises its writers.
    """
    session.execute(
        text(
            "SELECT pg_advisory_xact_lock(hashtextextended(concat('lianxin.exchange.log_order.', current_schema()), 0))"
        )
    )
