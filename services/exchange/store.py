"""exchange's persistence: the up-log, replicas, down-queues, cursors and quarantine (SQLAlchemy lives here)."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from lianxin.common.v1 import common_pb2
from lianxin.events.v1 import events_pb2
from sqlalchemy import Table, func, literal_column, select, text, update
from sqlalchemy import event as sa_event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from services.common.db import transaction
from services.common.events import parse_command, parse_envelope
from services.common.outbox import append_event
from services.common.regions import RegionTree
from services.common.service import BusEvent
from services.common.telemetry import record_event_spans
from services.common.waiting import Changes
from services.exchange import domain
from services.exchange.bulk import Bulk
from services.exchange.models import (
    audit_anchor,
    case_epoch,
    down_queue,
    inbox,
    link_cursor,
    outbox,
    quarantine,
    replica,
    sequence_skip,
    up_log,
)

log = logging.getLogger(__name__)

ENVELOPE = "envelope"
COMMAND = "command"
# Consumer name in exchange's inbox for commands delivered at their target: each command id once.
DELIVERED = "command-delivered"
# Peer name of quarantined commands that this node's own services issued (they came from no link).
LOCAL = "local"
MAX_BATCH_BYTES = domain.MAX_BATCH_BYTES
# session.info key: the children a transaction queued something down for (bumped after its commit).
_QUEUED_DOWN = "lianxin.exchange.queued_down"
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


@dataclass(frozen=True)
class Item:
    """One item crossing a link: its position on the sender's side and its serialized body."""

    position: int
    kind: str  # ENVELOPE | COMMAND
    body: bytes
    case_sequence: int = 0  # the sender's per-case link sequence (envelopes only)


@dataclass(frozen=True)
class Held:
    """One case event a node holds (its up-log row), as ListReplicas shows it."""

    case_id: str
    version: int
    event_type: str
    origin_node: str
    event_id: str
    case_sequence: int


@dataclass(frozen=True)
class _UpRow:
    """A row to append to the up-log; its case sequence is given at append time."""

    event_id: str
    case_id: str
    version: int
    event_type: str
    origin_node: str
    body: bytes

    @staticmethod
    def of(env: events_pb2.EventEnvelope, body: bytes) -> _UpRow:
        return _UpRow(env.event_id, env.case_id, env.version, env.WhichOneof("payload") or "", env.origin_node, body)


def command_hop_id(cmd: events_pb2.Command) -> str:
    """The key of one command on one leg (up-log row, down-queue item): command id, target and epoch seen.

    A command retargeted after a hand-off gets a new key, so it may pass a node it passed before;
    a resend of the same leg has the same key and is stored once.
    """
    return str(
        uuid.uuid5(uuid.NAMESPACE_URL, f"lianxin:command:{cmd.command_id}:{cmd.target_node}:{cmd.owner_epoch_seen}")
    )


@dataclass(frozen=True)
class Rejected:
    position: int
    reason: str


@dataclass(frozen=True)
class QuarantineRow:
    id: int
    peer_node: str
    direction: str
    reason: str
    summary: str
    received_at: datetime


@dataclass(frozen=True)
class ReplayOutcome:
    id: int
    applied: bool
    reason: str


@dataclass(frozen=True)
class DiscardOutcome:
    id: int
    discarded: bool
    reason: str
    released: list[int] = field(default_factory=list)  # later items of the case that then passed
    still_held: list[int] = field(default_factory=list)  # later items of the case that still fail


@dataclass(frozen=True)
class Cursor:
    position: int
    token: str
    last_contact: datetime | None


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _insert(session: Session, table: Table) -> Any:
    """A dialect INSERT that supports ON CONFLICT (both our databases have it)."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


class ExchangeStore:
    """All of exchange's reads and writes for one node; every public method is one transaction."""

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
        self._sf = session_factory
        self.node = node
        self.regions = regions
        self._clock = clock
        self._notify_relay = notify
        # Called after a commit that may have appended to the up-log: the parent link pushes it.
        self.wake_link = wake_link
        # Bumped per child after a commit that queued something down for it: its long poll answers.
        self.down_changes = Changes()
        # Last successful contact per (peer, kind) seen by this process: an idle link's keepalive is
        # remembered here instead of being written to link_cursor every time (cursors are written
        # when a position moves, with the contact time).
        self._contacts: dict[tuple[str, str], datetime] = {}

    def _notify(self) -> None:
        """After a commit that wrote the outbox or the up-log: wake the relay and the parent link."""
        self._notify_relay()
        self.wake_link()

    def note_contact(self, peer: str, kind: str) -> None:
        self._contacts[(peer, kind)] = self._clock()

    def _contact(self, peer: str, kind: str, stored: datetime | None) -> datetime | None:
        noted = self._contacts.get((peer, kind))
        if noted is None or (stored is not None and stored >= noted):
            return stored
        return noted

    # ------------------------------------------------------------------ up-log (local events)

    def record_local(self, env: events_pb2.EventEnvelope, body: bytes) -> bool:
        """Append a local case event to the up-log (idempotent by event id); a hand-off down is also queued."""
        return self.record_local_batch([(env, body)]) == 1

    def record_local_batch(self, events: Sequence[tuple[events_pb2.EventEnvelope, bytes]]) -> int:
        """``record_local`` for many events in one transaction; returns how many were new."""
        with transaction(self._sf) as session:
            # Lock order everywhere: up-log case locks, then case epochs, then the outbox.
            added = len(self._append_up(session, [_UpRow.of(env, body) for env, body in events]))
            for env, body in events:
                if env.WhichOneof("payload") != "case_handed_off":
                    continue
                hand_off = env.case_handed_off
                self._note_epochs(session, {env.case_id: (hand_off.new_owner_epoch, hand_off.to_node)})
                route = domain.route_down(hand_off.to_node, here=self.node, regions=self.regions)
                if route is not None and not route.local:
                    self._enqueue_down(session, route.next_child, env.event_id, ENVELOPE, body)
        if added:
            self.wake_link()
        return added

    def _append_up(
        self, session: Session, rows: Sequence[_UpRow], *, fresh_ids: set[str] | None = None
    ) -> list[_UpRow]:
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
        bulk = Bulk(session)
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
        fresh: list[_UpRow] = []
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

    def _append_up_command(self, session: Session, cmd: events_pb2.Command, body: bytes) -> bool:
        """Put a command on the up-log for the parent link to carry (once per leg); False if already there."""
        if session.get_bind().dialect.name == "postgresql":
            _lock_log_order(session)
        inserted = session.execute(
            _insert(session, up_log)
            .values(
                event_id=command_hop_id(cmd),
                case_id=cmd.case_id[:64],
                case_sequence=0,
                version=0,
                event_type=COMMAND,
                origin_node=self.node,
                body=body,
                created_at=self._clock(),
                kind=COMMAND,
            )
            .on_conflict_do_nothing()
            .returning(up_log.c.position)
        ).scalar_one_or_none()
        return inserted is not None

    def pending_up(
        self, after: int, limit: int, *, max_bytes: int = MAX_BATCH_BYTES, envelopes_only: bool = False
    ) -> list[Item]:
        """The up-log after ``after``: at most ``limit`` items and about ``max_bytes`` of bodies (at least one)."""
        only = f" AND kind = '{ENVELOPE}'" if envelopes_only else ""
        with self._sf() as session:
            rows = Bulk(session).rows(
                f"SELECT position, body, case_sequence, kind FROM up_log WHERE position > ?{only}"
                " ORDER BY position LIMIT ?",
                after,
                limit,
            )
        count = domain.batch_length([len(row[1]) for row in rows], max_bytes=max_bytes)
        return [Item(int(position), kind, body, int(number)) for position, body, number, kind in rows[:count]]

    def up_backlog(self, after: int) -> tuple[int, float]:
        """(items after ``after``, age in seconds of the oldest) for lag figures."""
        with self._sf() as session:
            count, oldest = session.execute(
                select(func.count(), func.min(up_log.c.created_at)).where(up_log.c.position > after)
            ).one()
        age = (self._clock() - (_aware(oldest) or self._clock())).total_seconds() if oldest else 0.0
        return int(count), max(0.0, age)

    def head_up(self) -> int:
        with self._sf() as session:
            return int(session.execute(select(func.coalesce(func.max(up_log.c.position), 0))).scalar_one())

    # ------------------------------------------------------------------ cursors

    def cursor(self, peer: str, kind: str) -> Cursor:
        with self._sf() as session:
            row = session.execute(
                select(link_cursor).where(link_cursor.c.peer == peer, link_cursor.c.kind == kind)
            ).one_or_none()
        if row is None:
            return Cursor(0, "", self._contact(peer, kind, None))
        return Cursor(int(row.position), row.token, self._contact(peer, kind, _aware(row.last_contact)))

    def save_cursor(self, peer: str, kind: str, *, position: int | None = None, token: str | None = None) -> int:
        """Store a cursor that never moves back; returns the stored position."""
        with transaction(self._sf) as session:
            return self._save_cursor(session, peer, kind, position=position, token=token)

    def _save_cursor(
        self, session: Session, peer: str, kind: str, *, position: int | None = None, token: str | None = None
    ) -> int:
        """Store a cursor that never moves back; returns the stored position."""
        now = self._clock()
        row = session.execute(
            select(link_cursor.c.position).where(link_cursor.c.peer == peer, link_cursor.c.kind == kind)
        ).one_or_none()
        if row is None:
            stored = position or 0
            session.execute(
                link_cursor.insert().values(peer=peer, kind=kind, position=stored, token=token or "", last_contact=now)
            )
            return stored
        stored = domain.advance_cursor(int(row.position), position)
        values: dict[str, Any] = {"position": stored, "last_contact": now}
        if token is not None:
            values["token"] = token
        session.execute(
            update(link_cursor).where(link_cursor.c.peer == peer, link_cursor.c.kind == kind).values(**values)
        )
        return stored

    def cursors(self) -> list[tuple[str, str, Cursor]]:
        with self._sf() as session:
            rows = session.execute(select(link_cursor)).all()
        found = [
            (r.peer, r.kind, Cursor(int(r.position), r.token, self._contact(r.peer, r.kind, _aware(r.last_contact))))
            for r in rows
        ]
        stored = {(peer, kind) for peer, kind, _ in found}
        # A peer only ever in contact (a child that has pulled but never had anything to acknowledge).
        found += [
            (peer, kind, Cursor(0, "", at)) for (peer, kind), at in self._contacts.items() if (peer, kind) not in stored
        ]
        return found

    # ------------------------------------------------------------------ up: receiving a child's push

    def receive_push(self, child: str, items: Sequence[Item]) -> tuple[int, list[Rejected]]:
        """Store a child's batch: replicas applied once, bad items quarantined; returns (acked, rejections).

        One transaction for the whole batch with a handful of statements: the case knowledge is
        loaded with IN lists, judged in memory by the pure rules, and written with executemany.
        """
        rejections: list[Rejected] = []
        with transaction(self._sf) as session:
            # Locks the child's cursor row: a retried push racing the original waits, then skips.
            stored = self._lock_cursor(session, child, "child_up")
            indexes, acked = domain.fresh_positions([item.position for item in items], stored)
            fresh = [items[i] for i in indexes]
            outcomes = self._accept_from_child(session, child, fresh)
            refused = [(item, reason) for item, reason in zip(fresh, outcomes, strict=True) if reason]
            self._quarantine(session, child, "up", refused)
            rejections = [Rejected(item.position, reason) for item, reason in refused]
            self._save_cursor(session, child, "child_up", position=acked)
        if any(reason is None for reason in outcomes):
            self._notify()
        return acked, rejections

    def _lock_cursor(self, session: Session, peer: str, kind: str) -> int:
        session.execute(
            _insert(session, link_cursor)
            .values(peer=peer, kind=kind, position=0, token="", last_contact=None)
            .on_conflict_do_nothing()
        )
        value = session.execute(
            select(link_cursor.c.position)
            .where(link_cursor.c.peer == peer, link_cursor.c.kind == kind)
            .with_for_update()
        ).scalar_one()
        return int(value)

    def _cursor_position(self, session: Session, peer: str, kind: str) -> int:
        value = session.execute(
            select(link_cursor.c.position).where(link_cursor.c.peer == peer, link_cursor.c.kind == kind)
        ).scalar_one_or_none()
        return int(value or 0)

    def _accept_from_child(self, session: Session, child: str, items: Sequence[Item]) -> list[str | None]:
        """Per item: None = applied; "" = duplicate (nothing to do); otherwise the refusal reason.

        Runs of envelopes are judged and written together; a command in between is routed on its
        own after the envelopes before it, so the outbox keeps the child's order.
        """
        outcomes: list[str | None] = []
        run: list[tuple[Item, events_pb2.EventEnvelope | None]] = []

        def flush() -> None:
            outcomes.extend(self._apply_envelopes(session, child, run))
            run.clear()

        for item in items:
            if item.kind == COMMAND:
                flush()
                outcomes.append(self._route_command(session, item.body, came_from_parent=False))
            else:
                run.append((item, parse_envelope(item.body)))
        flush()
        return outcomes

    def _apply_envelopes(
        self, session: Session, child: str, run: Sequence[tuple[Item, events_pb2.EventEnvelope | None]]
    ) -> list[str | None]:
        if not run:
            return []
        readable: list[tuple[Item, events_pb2.EventEnvelope]] = []
        events: list[domain.InboundEvent] = []
        for item, env in run:
            if env is None:
                continue
            event_type = env.WhichOneof("payload") or ""
            new_owner_epoch = 0
            if event_type == "case_handed_off":
                hand_off = env.case_handed_off
                new_owner_epoch = domain.escalation_epoch(event_type, hand_off.kind, hand_off.new_owner_epoch)
            readable.append((item, env))
            events.append(
                domain.InboundEvent(
                    env.event_id,
                    env.case_id,
                    env.version,
                    env.owner_epoch,
                    env.owner_node,
                    env.origin_node,
                    event_type,
                    item.case_sequence,
                    new_owner_epoch,
                )
            )
        ledgers, stored_ids = self._load_ledgers(session, child, events)
        epochs_before = {case_id: ledger.known_epoch for case_id, ledger in ledgers.items()}
        decisions = domain.judge_batch(
            events, child=child, receiver=self.node, regions=self.regions, ledgers=ledgers, stored_ids=stored_ids
        )
        applied = [
            (item, env, event)
            for (item, env), event, decision in zip(readable, events, decisions, strict=True)
            if decision.verdict is domain.Verdict.APPLY
        ]
        if applied:
            self._store_replicas(session, child, applied, epochs_before)
        verdicts = iter(decisions)
        outcomes: list[str | None] = []
        for _, env in run:
            if env is None:
                outcomes.append("malformed payload: not an event envelope")
                continue
            decision = next(verdicts)
            if decision.verdict is domain.Verdict.APPLY:
                outcomes.append(None)
            elif decision.verdict is domain.Verdict.DUPLICATE:
                outcomes.append("")
            else:
                outcomes.append(decision.reason)
        return outcomes

    def _load_ledgers(
        self, session: Session, child: str, events: Sequence[domain.InboundEvent]
    ) -> tuple[dict[str, domain.CaseLedger], set[str]]:
        """What this node holds for the batch's cases (from ``child``'s link) and which event ids it stores."""
        bulk = Bulk(session)
        cases = sorted({e.case_id for e in events if e.case_id})
        ids = [e.event_id for e in events if e.event_id]
        stored_ids = (
            {row[0] for row in bulk.rows("SELECT event_id FROM replica WHERE event_id {}", lists=[ids])}
            if ids
            else set()
        )
        ledgers = {case_id: domain.CaseLedger() for case_id in cases}
        if not cases:
            return ledgers, stored_ids
        for case_id, last in bulk.rows(
            "SELECT case_id, max(case_sequence) FROM replica WHERE child_node = ? AND case_id {} GROUP BY case_id",
            child,
            lists=[cases],
        ):
            ledgers[case_id].last_sequence = int(last)
        # A place an operator discarded counts as passed (domain.judge_discard).
        for case_id, last in bulk.rows(
            "SELECT case_id, max(case_sequence) FROM sequence_skip WHERE child_node = ? AND case_id {}"
            " GROUP BY case_id",
            child,
            lists=[cases],
        ):
            ledgers[case_id].last_sequence = max(ledgers[case_id].last_sequence or 0, int(last))
        for case_id, epoch in bulk.rows("SELECT case_id, owner_epoch FROM case_epoch WHERE case_id {}", lists=[cases]):
            ledgers[case_id].known_epoch = int(epoch)
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

    def _store_replicas(
        self,
        session: Session,
        child: str,
        applied: Sequence[tuple[Item, events_pb2.EventEnvelope, domain.InboundEvent]],
        epochs_before: dict[str, int | None],
    ) -> None:
        """Write what a batch applies: our up-log (re-sequenced), epochs, replicas, hand-offs passing by, the outbox."""
        # Multi-hop: what the child sent travels on to our parent, numbered on our own up-log. The
        # events were just judged new (not among our replicas), and only this link brings them.
        self._append_up(
            session,
            [
                _UpRow(e.event_id, e.case_id, e.version, e.event_type, e.origin_node, item.body)
                for item, _, e in applied
            ],
            fresh_ids={e.event_id for _, _, e in applied},
        )
        # Only what raises the known epoch (the upsert would ignore the rest anyway).
        self._note_epochs(
            session,
            domain.epochs_to_note(
                [(event, env.case_handed_off.to_node if event.new_owner_epoch else "") for _, env, event in applied],
                epochs_before,
            ),
        )
        now = self._clock()
        bulk = Bulk(session)
        bulk.insert(
            replica,
            (
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
            ),
            [
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
                    item.body,
                    now,
                )
                for item, _, e in applied
            ],
        )
        for item, env, event in applied:
            if event.event_type == "case_handed_off":
                # A hand-off that came up from one child for a node under another (转送 sideways): down it goes.
                toward = domain.hand_off_route(
                    env.case_handed_off.to_node, here=self.node, child=child, regions=self.regions
                )
                if toward is not None:
                    self._enqueue_down(session, toward, event.event_id, ENVELOPE, item.body)
        # Our own services see the replica too (through the outbox, so at least once, in order).
        self._append_outbox(session, [(e.event_id, e.event_type, e.case_id, item.body) for item, _, e in applied], now)
        # Each replica continues its case's trace (the context its event carries), so one trace runs
        # from the county's intake up to the province; the push that brought it is polling, not traced.
        record_event_spans(
            "exchange stores replica", [env.trace_context for _, env, _ in applied], {"lianxin.child": child}
        )

    def _append_outbox(self, session: Session, events: Sequence[tuple[str, str, str, bytes]], now: datetime) -> None:
        """``services.common.outbox.append_events`` for (event id, type, case, body) rows, in one statement.

        On PostgreSQL it takes the same per-case advisory locks as ``append_event`` (the key below
        must hash exactly like ``outbox._pg_lock_key("append", outbox, case_id)``), so the relay keeps
        each case in order while other writers append to the same outbox.
        """
        if not events:
            return
        bulk = Bulk(session)
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

    def _note_epochs(self, session: Session, epochs: dict[str, tuple[int, str]]) -> None:
        """Raise each case's known ownership epoch (never lowers it)."""
        Bulk(session).insert(
            case_epoch,
            ("case_id", "owner_epoch", "owner_node"),
            [(c, e, o) for c, (e, o) in sorted(epochs.items())],
            suffix="ON CONFLICT (case_id) DO UPDATE SET owner_epoch = excluded.owner_epoch,"
            " owner_node = excluded.owner_node WHERE case_epoch.owner_epoch < excluded.owner_epoch",
        )

    def known_owner(self, case_id: str) -> tuple[int, str] | None:
        """(epoch, owner node) of the newest hand-off this node has seen for the case, if any."""
        with self._sf() as session:
            row = session.execute(
                select(case_epoch.c.owner_epoch, case_epoch.c.owner_node).where(case_epoch.c.case_id == case_id)
            ).one_or_none()
        return (int(row[0]), row[1]) if row is not None else None

    # ------------------------------------------------------------------ down

    def _enqueue_down(self, session: Session, child: str, item_id: str, kind: str, body: bytes) -> None:
        queued: set[str] | None = session.info.get(_QUEUED_DOWN)
        if queued is None:
            queued = session.info[_QUEUED_DOWN] = set()
            changes = self.down_changes

            def committed(done: Session) -> None:
                # Only after the commit: a child's long poll woken earlier would not see the rows yet.
                changes.bump(*sorted(done.info.pop(_QUEUED_DOWN, ())))

            def rolled_back(done: Session) -> None:
                done.info.pop(_QUEUED_DOWN, None)

            sa_event.listen(session, "after_commit", committed, once=True)
            sa_event.listen(session, "after_rollback", rolled_back, once=True)
        queued.add(child)
        if session.get_bind().dialect.name == "postgresql":
            _lock_log_order(session)  # a child's PullDown reads positions too
        session.execute(
            _insert(session, down_queue)
            .values(child_node=child, item_id=item_id, kind=kind, body=body, created_at=self._clock())
            .on_conflict_do_nothing()
        )

    def enqueue_command(self, command: events_pb2.Command) -> str | None:
        """Route a locally issued command toward its target; returns a refusal reason, None when routed."""
        with transaction(self._sf) as session:
            reason = self._route_command(session, command.SerializeToString(), came_from_parent=False)
        if reason is None:
            self._notify()
        return reason or None

    def record_command(self, body: bytes) -> str | None:
        """A command this node's services put on the bus: routed, or quarantined (peer ``local``) with the reason.

        Idempotent: a redelivered command takes the same leg (same up-log or down-queue key) or is
        delivered once (inbox), so the bus may deliver it again.
        """
        with transaction(self._sf) as session:
            reason = self._route_command(session, body, came_from_parent=False)
            if reason:
                self._quarantine(session, LOCAL, "local", [(Item(0, COMMAND, body), reason)])
        if reason is None:
            self._notify()
        return reason or None

    def _route_command(self, session: Session, body: bytes, *, came_from_parent: bool) -> str | None:
        """Deliver, send down, or send up a command; returns a refusal reason, "" for an already delivered one.

        The command follows ownership: when this node knows a newer owner than the issuer saw
        (a 上报 or 交办 since), it is retargeted there first, with the newer epoch. A handling update
        (for the registering node's citizen tracking) is never retargeted.
        """
        cmd = parse_command(body)
        if cmd is None:
            return "malformed payload: not a command"
        if len(cmd.command_id) > 36:
            return "malformed payload: command_id longer than 36 characters"
        known = session.execute(
            select(case_epoch.c.owner_epoch, case_epoch.c.owner_node).where(case_epoch.c.case_id == cmd.case_id)
        ).one_or_none()
        # A handling update goes to the node that registered the case (its citizen's tracking), not
        # to the owner: it never follows ownership.
        chased = (
            None
            if cmd.WhichOneof("body") == "handling"
            else domain.chase_owner(
                cmd.target_node,
                cmd.owner_epoch_seen,
                known_epoch=int(known[0]) if known is not None else None,
                known_owner=known[1] if known is not None else "",
            )
        )
        if chased is not None:
            cmd.target_node, cmd.owner_epoch_seen = chased
            body = cmd.SerializeToString()
        route = domain.route_command(
            cmd.target_node, here=self.node, regions=self.regions, came_from_parent=came_from_parent and chased is None
        )
        if route.action is domain.CommandAction.REFUSE:
            return route.reason
        if route.action is domain.CommandAction.DOWN:
            self._enqueue_down(session, route.next_child, command_hop_id(cmd), COMMAND, body)
        elif route.action is domain.CommandAction.UP:
            self._append_up_command(session, cmd, body)
        else:
            first = session.execute(
                _insert(session, inbox)
                .values(consumer=DELIVERED, event_id=cmd.command_id, received_at=self._clock())
                .on_conflict_do_nothing()
                .returning(inbox.c.event_id)
            ).scalar_one_or_none()
            if first is None:
                return ""  # delivered before (the same command by another way, or replayed)
            append_event(
                session,
                outbox,
                BusEvent(event_id=cmd.command_id, source="exchange", event_type=COMMAND, body=body),
                cmd.case_id,
            )
        return None

    def pull_down(self, child: str, after: int, limit: int) -> tuple[list[Item], int]:
        with transaction(self._sf) as session:
            rows = session.execute(
                select(down_queue.c.position, down_queue.c.kind, down_queue.c.body)
                .where(down_queue.c.child_node == child, down_queue.c.position > after)
                .order_by(down_queue.c.position)
                .limit(limit)
            ).all()
            head = session.execute(
                select(func.coalesce(func.max(down_queue.c.position), 0)).where(down_queue.c.child_node == child)
            ).scalar_one()
        self.note_contact(child, "child_down")  # remembered, not written: an idle child pulls often
        return [Item(int(r.position), r.kind, r.body) for r in rows], int(head)

    def ack_down(self, child: str, position: int) -> int:
        with transaction(self._sf) as session:
            return self._save_cursor(session, child, "child_down", position=position)

    def down_backlog(self, child: str, after: int) -> tuple[int, float]:
        with self._sf() as session:
            count, oldest = session.execute(
                select(func.count(), func.min(down_queue.c.created_at)).where(
                    down_queue.c.child_node == child, down_queue.c.position > after
                )
            ).one()
        age = (self._clock() - (_aware(oldest) or self._clock())).total_seconds() if oldest else 0.0
        return int(count), max(0.0, age)

    def apply_down(self, parent: str, items: Sequence[Item], *, cursor_kind: str = "down") -> int:
        """Apply pulled items exactly once (the cursor moves in the same transaction); returns the new cursor."""
        applied_any = False
        with transaction(self._sf) as session:
            stored = self._cursor_position(session, parent, cursor_kind)
            position = stored
            for item in items:
                if item.position <= stored:
                    continue
                reason = self._accept_from_parent(session, item)
                if reason:
                    self._quarantine(session, parent, "down", [(item, reason)])
                else:
                    applied_any = True
                position = max(position, item.position)
            position = self._save_cursor(session, parent, cursor_kind, position=position)
        if applied_any:
            self._notify()
        return position

    def _accept_from_parent(self, session: Session, item: Item) -> str | None:
        if item.kind == COMMAND:
            return self._route_command(session, item.body, came_from_parent=True)
        env = parse_envelope(item.body)
        if env is None or env.WhichOneof("payload") != "case_handed_off":
            return "malformed payload: only case_handed_off envelopes travel down"
        hand_off = env.case_handed_off
        known = session.execute(
            select(case_epoch.c.owner_epoch).where(case_epoch.c.case_id == env.case_id)
        ).scalar_one_or_none()
        if known is not None and hand_off.new_owner_epoch < int(known):
            return f"stale owner: hand-off epoch {hand_off.new_owner_epoch} < known {known}"
        route = domain.route_down(hand_off.to_node, here=self.node, regions=self.regions)
        if route is None:
            return f"out of subtree: hand-off to {hand_off.to_node or '-'} is not under {self.node}"
        self._note_epochs(session, {env.case_id: (hand_off.new_owner_epoch, hand_off.to_node)})
        # Published here also when it only passes through (routing ignores a hand-off not addressed
        # to it): this node's warehouse counts the cases handed down into its subtree (docs/stats.md).
        append_event(
            session,
            outbox,
            BusEvent(event_id=env.event_id, source="exchange", event_type="case_handed_off", body=item.body),
            env.case_id,
        )
        if not route.local:
            self._enqueue_down(session, route.next_child, env.event_id, ENVELOPE, item.body)
        return None

    def apply_transfers(self, items: Sequence[tuple[str, bytes]]) -> None:
        """National transfers as hand-off envelopes: each transfer id once (the national side may duplicate)."""
        applied_any = False
        with transaction(self._sf) as session:
            for transfer_id, body in items:
                first = session.execute(
                    _insert(session, inbox)
                    .values(consumer="national", event_id=transfer_id[:36], received_at=self._clock())
                    .on_conflict_do_nothing()
                    .returning(inbox.c.event_id)
                ).scalar_one_or_none()
                if first is None:
                    continue
                reason = self._accept_from_parent(session, Item(0, ENVELOPE, body))
                if reason:
                    self._quarantine(session, "national", "down", [(Item(0, ENVELOPE, body), reason)])
                else:
                    applied_any = True
            self._save_cursor(session, "national", "national_down")  # records the contact
        if applied_any:
            self._notify()

    # ------------------------------------------------------------------ quarantine

    def _quarantine(self, session: Session, peer: str, direction: str, refused: Sequence[tuple[Item, str]]) -> None:
        if not refused:
            return
        now = self._clock()
        rows = []
        for item, reason in refused:
            summary = "unreadable item"
            env = parse_envelope(item.body) if item.kind == ENVELOPE else None
            if env is not None:
                summary = domain.payload_summary(
                    env.WhichOneof("payload") or "", env.case_id, env.version, item.case_sequence
                )
            elif item.kind == COMMAND and (cmd := parse_command(item.body)) is not None:
                summary = f"command {cmd.WhichOneof('body')} {cmd.case_id} → {cmd.target_node}"
            rows.append(
                {
                    "peer_node": peer,
                    "direction": direction,
                    "kind": item.kind,
                    "reason": reason,
                    "summary": summary,
                    "body": item.body,
                    "case_sequence": item.case_sequence,
                    "received_at": now,
                }
            )
        session.execute(quarantine.insert(), rows)

    def list_quarantine(
        self, peer: str = "", *, after_id: int = 0, limit: int = 100
    ) -> tuple[list[QuarantineRow], int]:
        where = [quarantine.c.resolved_at.is_(None), quarantine.c.id > after_id]
        if peer:
            where.append(quarantine.c.peer_node == peer)
        with self._sf() as session:
            rows = session.execute(select(quarantine).where(*where).order_by(quarantine.c.id).limit(limit)).all()
            total = session.execute(
                select(func.count()).select_from(quarantine).where(*where[:1], *where[2:])
            ).scalar_one()
        return (
            [
                QuarantineRow(
                    int(r.id), r.peer_node, r.direction, r.reason, r.summary, _aware(r.received_at) or self._clock()
                )
                for r in rows
            ],
            int(total),
        )

    def quarantined_counts(self) -> dict[str, int]:
        with self._sf() as session:
            rows = session.execute(
                select(quarantine.c.peer_node, func.count())
                .where(quarantine.c.resolved_at.is_(None))
                .group_by(quarantine.c.peer_node)
            ).all()
        return {r[0]: int(r[1]) for r in rows}

    def replay(self, ids: Sequence[int]) -> list[ReplayOutcome]:
        """Retry quarantined items in the order they arrived; those that pass are applied and resolved."""
        outcomes: list[ReplayOutcome] = []
        applied_any = False
        for qid in sorted(ids):
            with transaction(self._sf) as session:
                row = session.execute(select(quarantine).where(quarantine.c.id == qid)).one_or_none()
                if row is None or row.resolved_at is not None:
                    outcomes.append(ReplayOutcome(qid, False, "not in quarantine"))
                    continue
                item = Item(0, row.kind, row.body, int(row.case_sequence))
                if row.direction == "up":
                    # Judged one at a time with the child's pushes (the same cursor lock as receive_push).
                    self._lock_cursor(session, row.peer_node, "child_up")
                    reason = self._accept_from_child(session, row.peer_node, [item])[0]
                elif row.direction == "local":
                    reason = self._route_command(session, item.body, came_from_parent=False)
                else:
                    reason = self._accept_from_parent(session, item)
                if reason:
                    session.execute(update(quarantine).where(quarantine.c.id == qid).values(reason=reason))
                    outcomes.append(ReplayOutcome(qid, False, reason))
                    continue
                session.execute(
                    update(quarantine)
                    .where(quarantine.c.id == qid)
                    .values(resolved_at=self._clock(), disposition="replayed")
                )
                applied_any = applied_any or reason is None
                outcomes.append(ReplayOutcome(qid, True, ""))
        if applied_any:
            self._notify()
        return outcomes

    def discard(self, ids: Sequence[int], *, actor: str, note: str) -> list[DiscardOutcome]:
        """Discard quarantined items for good, then replay the later items of each case held behind them.

        Each discard is one transaction: the item leaves quarantine marked ``discarded`` with the
        operator and the reason, and an event a child pushed has its case sequence recorded as
        passed on that link (``sequence_skip``, ``domain.judge_discard``). Then the case's later
        quarantined items from the same link are replayed in sequence order (each applied when it
        passes, as ``ReplayQuarantine`` would).
        """
        outcomes: list[DiscardOutcome] = []
        for qid in ids:
            with transaction(self._sf) as session:
                row = session.execute(select(quarantine).where(quarantine.c.id == qid)).one_or_none()
                if row is None or row.resolved_at is not None:
                    outcomes.append(DiscardOutcome(qid, False, "not in quarantine"))
                    continue
                if row.direction == "up":
                    # Serialised with the child's pushes: none is judged against a half-made skip.
                    self._lock_cursor(session, row.peer_node, "child_up")
                env = parse_envelope(row.body) if row.kind == ENVELOPE and row.direction == "up" else None
                case_id = env.case_id if env is not None else ""
                held_behind: list[tuple[int, int]] = []  # (sequence, quarantine id) of the case's other items
                decision = domain.judge_discard(0, last_passed=0, earlier_held=())
                if case_id:
                    held_behind = self._held_of_case(session, row.peer_node, case_id, exclude=qid)
                    last = self._last_passed(session, row.peer_node, case_id)
                    sequence = int(row.case_sequence)
                    decision = domain.judge_discard(
                        sequence,
                        last_passed=last,
                        earlier_held=[n for n, _ in held_behind if last < n < sequence],
                    )
                if not decision.allowed:
                    outcomes.append(DiscardOutcome(qid, False, decision.reason))
                    continue
                now = self._clock()
                if decision.skip:
                    session.execute(
                        sequence_skip.insert().values(
                            child_node=row.peer_node,
                            case_id=case_id,
                            case_sequence=int(row.case_sequence),
                            quarantine_id=qid,
                            skipped_at=now,
                        )
                    )
                session.execute(
                    update(quarantine)
                    .where(quarantine.c.id == qid)
                    .values(resolved_at=now, disposition="discarded", resolved_by=actor[:64], note=note)
                )
            log.warning(
                "quarantined item discarded",
                extra={"quarantine_id": qid, "peer": row.peer_node, "summary": row.summary, "actor": actor},
            )
            released, still_held = self._release_behind(row.peer_node, case_id) if case_id else ([], [])
            outcomes.append(DiscardOutcome(qid, True, "", released=released, still_held=still_held))
        return outcomes

    def _release_behind(self, child: str, case_id: str) -> tuple[list[int], list[int]]:
        """Replay the case's quarantined events from ``child`` in sequence order until none passes.

        Asked again after each round, under the link's cursor lock: an event the child pushed while
        an earlier one was being released (quarantined as a gap just before) is released too, and
        a push after the last round is judged after everything released.
        """
        released: list[int] = []
        tried: set[int] = set()
        while True:
            with transaction(self._sf) as session:
                self._lock_cursor(session, child, "child_up")
                pending = [
                    q for _, q in sorted(self._held_of_case(session, child, case_id, exclude=0)) if q not in tried
                ]
            if not pending:
                break
            outcomes = self.replay_in_order(pending)
            tried.update(pending)
            passed = [o.id for o in outcomes if o.applied]
            released += passed
            if not passed:
                break
            tried.difference_update(o.id for o in outcomes if not o.applied)  # may pass after the ones released
        with self._sf() as session:
            still_held = [q for _, q in sorted(self._held_of_case(session, child, case_id, exclude=0))]
        return released, still_held

    def _held_of_case(self, session: Session, peer: str, case_id: str, *, exclude: int) -> list[tuple[int, int]]:
        """(case sequence, quarantine id) of ``case_id``'s unresolved events quarantined from child ``peer``."""
        rows = session.execute(
            select(quarantine.c.id, quarantine.c.case_sequence, quarantine.c.body).where(
                quarantine.c.peer_node == peer,
                quarantine.c.direction == "up",
                quarantine.c.kind == ENVELOPE,
                quarantine.c.resolved_at.is_(None),
                quarantine.c.id != exclude,
            )
        ).all()
        # The quarantine has no case column (it holds whatever arrived); it stays small, so read the bodies.
        held = []
        for qid, number, body in rows:
            env = parse_envelope(body)
            if env is not None and env.case_id == case_id:
                held.append((int(number), int(qid)))
        return held

    def _last_passed(self, session: Session, child: str, case_id: str) -> int:
        stored = session.execute(
            select(func.max(replica.c.case_sequence)).where(replica.c.child_node == child, replica.c.case_id == case_id)
        ).scalar_one_or_none()
        skipped = session.execute(
            select(func.max(sequence_skip.c.case_sequence)).where(
                sequence_skip.c.child_node == child, sequence_skip.c.case_id == case_id
            )
        ).scalar_one_or_none()
        return max(int(stored or 0), int(skipped or 0))

    def replay_in_order(self, ids: Sequence[int]) -> list[ReplayOutcome]:
        """``replay`` one item at a time in the order given (a case's items by sequence, not arrival)."""
        outcomes: list[ReplayOutcome] = []
        for qid in ids:
            outcomes += self.replay([qid])
        return outcomes

    # ------------------------------------------------------------------ what this node holds

    # ------------------------------------------------------------------ audit anchors of children

    def record_anchor(self, child: str, sequence: int, chain_hash: str, at: datetime | None) -> None:
        """Keep a child's audit chain head; the first hash received for a sequence is never replaced."""
        with transaction(self._sf) as session:
            session.execute(
                _insert(session, audit_anchor)
                .values(child_node=child, sequence=sequence, hash=chain_hash, at=at, received_at=self._clock())
                .on_conflict_do_nothing()
            )

    def anchors(self, child: str) -> list[tuple[int, str, datetime | None, datetime]]:
        """(sequence, hash, written at, received at) of ``child``'s anchors, oldest first."""
        with self._sf() as session:
            rows = session.execute(
                select(audit_anchor).where(audit_anchor.c.child_node == child).order_by(audit_anchor.c.sequence)
            ).all()
        return [(int(r.sequence), r.hash, _aware(r.at), _aware(r.received_at) or self._clock()) for r in rows]

    def holdings(self, *, subtree: str = "", case_id: str = "") -> list[Held]:
        """Each case event held (the up-log: own and the subtree's), by case, envelope version and event id."""
        c = up_log.c
        # The kind as a literal, as in ux_up_log_envelope_case_sequence's WHERE: a bound parameter
        # keeps that partial index from serving one case's events (the whole up-log was read).
        query = select(c.case_id, c.version, c.event_type, c.origin_node, c.event_id, c.case_sequence).where(
            c.kind == literal_column(f"'{ENVELOPE}'")
        )
        if case_id:
            query = query.where(c.case_id == case_id)
        if subtree:
            query = query.where(c.origin_node.in_(list(self.regions.subtree(subtree))))
        with self._sf() as session:
            rows = session.execute(query.order_by(c.case_id, c.version, c.event_id)).all()
        return [Held(r[0], int(r[1]), r[2], r[3], r[4], int(r[5])) for r in rows]

    def case_digests(
        self, *, subtree: str = "", case_ids: Sequence[str] = (), after: str = "", limit: int = 500
    ) -> list[domain.CaseSummary]:
        """One summary per case held (``DigestCases``): the given cases, or a page of ``limit`` cases
        after the case id ``after``, each over its events that originated in ``subtree``."""
        c = up_log.c
        # The kind as a literal, as in holdings(): a bound parameter kept the partial index from
        # serving the page's cases, and PostgreSQL's generic plan read the whole up-log (issue 20).
        where: list[Any] = [c.kind == literal_column(f"'{ENVELOPE}'")]
        if subtree:
            where.append(c.origin_node.in_(list(self.regions.subtree(subtree))))
        with self._sf() as session:
            if case_ids:
                page = sorted(set(case_ids))
            else:
                page = list(
                    session.execute(
                        select(c.case_id)
                        .where(*where, c.case_id > after)
                        .group_by(c.case_id)
                        .order_by(c.case_id)
                        .limit(limit)
                    ).scalars()
                )
            if not page:
                return []
            rows = session.execute(
                select(c.case_id, c.version, c.event_type, c.origin_node, c.event_id, c.case_sequence, c.body).where(
                    *where, c.case_id.in_(page)
                )
            ).all()
        by_case: dict[str, list[Any]] = {}
        for row in rows:
            by_case.setdefault(row[0], []).append(row)
        out = []
        for case_id in page:
            found = by_case.get(case_id, [])
            held = [Held(r[0], int(r[1]), r[2], r[3], r[4], int(r[5])) for r in found]
            events = [event for r in found if (event := _held_event(r[6])) is not None]
            out.append(domain.summarise_case(case_id, events, digest(held) if held else ""))
        return out


def _held_event(body: bytes) -> domain.HeldEvent | None:
    env = parse_envelope(body)
    if env is None:
        return None
    kind = env.WhichOneof("payload") or ""
    state, work_order_id, to_node, epoch = "", "", "", 0
    if kind == "work_order_changed" and env.work_order_changed.to_state:
        state = _STATE_NAMES.get(env.work_order_changed.to_state, "")
        work_order_id = env.work_order_changed.work_order_id
    elif kind == "work_order_created":
        created = env.work_order_created
        work_order_id = created.work_order_id
        state = "ASSIGNED" if created.unit_id and not created.manual_queue else "REGISTERED"
    elif kind == "case_handed_off":
        state, to_node, epoch = "TRANSFERRED", env.case_handed_off.to_node, env.case_handed_off.new_owner_epoch
    else:
        state = _STATE_BY_PAYLOAD.get(kind, "")
    return domain.HeldEvent(
        event_id=env.event_id,
        version=env.version,
        event_type=kind,
        owner_node=env.owner_node,
        owner_epoch=env.owner_epoch,
        state=state,
        work_order_id=work_order_id,
        hand_off_to=to_node,
        hand_off_epoch=epoch,
    )


_STATE_BY_PAYLOAD = {"case_registered": "REGISTERED", "case_withdrawn": "WITHDRAWN", "case_merged": "MERGED"}
_STATE_NAMES = {number: name.removeprefix("CASE_STATE_") for name, number in common_pb2.CaseState.items() if number}


def digest(held: Sequence[Held]) -> str:
    """SHA-256 over the sorted "case:version:event_id" lines: equal on two nodes iff they hold the same events.

    Not over the case sequences: each node numbers its own up-log, so those differ between nodes.
    """
    h = hashlib.sha256()
    for case_id, version, event_id in sorted((e.case_id, e.version, e.event_id) for e in held):
        h.update(f"{case_id}:{version}:{event_id}\n".encode())
    return h.hexdigest()


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
