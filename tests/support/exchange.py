"""Exchange's unit of work in memory: the handlers tested without a database (fast, no I/O).

Each unit works on a copy of the ``FakeExchangeStore``'s tables and puts it back on ``commit``; a unit
left without committing changes nothing, as a rolled-back transaction would.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from services.exchange import domain
from services.exchange.digests import Held
from services.exchange.ports import (
    COMMAND,
    ENVELOPE,
    Cursor,
    HeldRow,
    Item,
    Quarantined,
    QuarantineRow,
    Refused,
    Replica,
    UpRow,
)


@dataclass
class UpEntry:
    position: int
    row: UpRow
    case_sequence: int
    kind: str
    at: datetime


@dataclass
class QuarantineEntry:
    id: int
    peer_node: str
    direction: str
    item: Item
    reason: str
    summary: str
    received_at: datetime
    resolved_at: datetime | None = None
    disposition: str = ""
    resolved_by: str = ""
    note: str = ""


@dataclass
class Tables:
    """What exchange keeps, as the SQL schema has it (services/exchange/models.py)."""

    up_log: list[UpEntry] = field(default_factory=list)
    cursors: dict[tuple[str, str], Cursor] = field(default_factory=dict)
    replicas: list[tuple[str, Replica, datetime]] = field(default_factory=list)  # (child, replica, received)
    skips: list[tuple[str, str, int]] = field(default_factory=list)  # (child, case, sequence)
    epochs: dict[str, tuple[int, str]] = field(default_factory=dict)
    outbox: list[tuple[str, str, str, bytes]] = field(default_factory=list)  # (event id, type, case, body)
    inbox: set[tuple[str, str]] = field(default_factory=set)
    down_queue: list[tuple[int, str, str, str, bytes, datetime]] = field(default_factory=list)
    quarantine: list[QuarantineEntry] = field(default_factory=list)
    anchors: dict[tuple[str, int], tuple[str, datetime | None, datetime]] = field(default_factory=dict)


class FakeExchangeStore:
    """The tables every unit of work shares; ``queued_down`` is told the children after each commit."""

    def __init__(self, *, node: str, clock: Callable[[], datetime] = lambda: datetime(2026, 12, 6, tzinfo=UTC)) -> None:
        self.node = node
        self.clock = clock
        self.tables = Tables()
        self.announced: list[str] = []  # children told of items queued down for them, in order
        self.commits = 0

    def unit_of_work(self) -> FakeExchangeUnitOfWork:
        return FakeExchangeUnitOfWork(self)


class FakeExchangeUnitOfWork:
    """``ports.ExchangeUnitOfWork`` over a copy of the store's tables."""

    def __init__(self, store: FakeExchangeStore) -> None:
        self._store = store
        self._clock = store.clock
        self.t = copy.deepcopy(store.tables)
        self._children: set[str] = set()

    def __enter__(self) -> FakeExchangeUnitOfWork:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def commit(self) -> None:
        self._store.tables = self.t
        self.t = copy.deepcopy(self.t)
        self._store.commits += 1
        self._store.announced += sorted(self._children)
        self._children.clear()

    # ---- cursors
    def lock_cursor(self, peer: str, kind: str) -> int:
        return self.t.cursors.setdefault((peer, kind), Cursor(0, "", None)).position

    def cursor_position(self, peer: str, kind: str) -> int:
        found = self.t.cursors.get((peer, kind))
        return found.position if found is not None else 0

    def save_cursor(self, peer: str, kind: str, *, position: int | None = None, token: str | None = None) -> int:
        old = self.t.cursors.get((peer, kind))
        if old is None:
            stored = position or 0
            self.t.cursors[(peer, kind)] = Cursor(stored, token or "", self._clock())
            return stored
        stored = domain.advance_cursor(old.position, position)
        self.t.cursors[(peer, kind)] = Cursor(stored, old.token if token is None else token, self._clock())
        return stored

    def cursor(self, peer: str, kind: str) -> Cursor | None:
        return self.t.cursors.get((peer, kind))

    def cursors(self) -> list[tuple[str, str, Cursor]]:
        return [(peer, kind, c) for (peer, kind), c in self.t.cursors.items()]

    # ---- up-log
    def _append(self, row: UpRow, number: int, kind: str) -> None:
        position = (self.t.up_log[-1].position if self.t.up_log else 0) + 1
        self.t.up_log.append(UpEntry(position, row, number, kind, self._clock()))

    def append_up(self, rows: Sequence[UpRow], *, fresh_ids: set[str] | None = None) -> list[UpRow]:
        present = {e.row.event_id for e in self.t.up_log}
        last: dict[str, int] = {}
        for e in self.t.up_log:
            if e.kind == ENVELOPE:
                last[e.row.case_id] = max(last.get(e.row.case_id, 0), e.case_sequence)
        fresh = []
        for row in rows:
            if row.event_id not in present:
                present.add(row.event_id)
                fresh.append(row)
        for row, number in zip(fresh, domain.number_case_events([r.case_id for r in fresh], last), strict=True):
            self._append(row, number, ENVELOPE)
        return fresh

    def append_up_command(self, hop_id: str, case_id: str, body: bytes) -> bool:
        if any(e.row.event_id == hop_id for e in self.t.up_log):
            return False
        self._append(UpRow(hop_id, case_id[:64], 0, COMMAND, self._store.node, body), 0, COMMAND)
        return True

    def pending_up(self, after: int, limit: int, *, envelopes_only: bool) -> list[Item]:
        rows = [e for e in self.t.up_log if e.position > after and (e.kind == ENVELOPE or not envelopes_only)]
        return [Item(e.position, e.kind, e.row.body, e.case_sequence) for e in rows[:limit]]

    def up_backlog(self, after: int) -> tuple[int, float]:
        waiting = [e for e in self.t.up_log if e.position > after]
        age = (self._clock() - waiting[0].at).total_seconds() if waiting else 0.0
        return len(waiting), max(0.0, age)

    def head_up(self) -> int:
        return self.t.up_log[-1].position if self.t.up_log else 0

    def _held(self, origins: Sequence[str] | None) -> list[HeldRow]:
        return [
            HeldRow(
                Held(
                    e.row.case_id, e.row.version, e.row.event_type, e.row.origin_node, e.row.event_id, e.case_sequence
                ),
                e.row.body,
            )
            for e in self.t.up_log
            if e.kind == ENVELOPE and (origins is None or e.row.origin_node in origins)
            for r in [e.row]
        ]

    def holdings(self, *, origins: Sequence[str] | None, case_id: str) -> list[Held]:
        held = [r.held for r in self._held(origins) if not case_id or r.held.case_id == case_id]
        return sorted(held, key=lambda h: (h.case_id, h.version, h.event_id))

    def digest_page(self, *, origins: Sequence[str] | None, after: str, limit: int) -> list[str]:
        return sorted({r.held.case_id for r in self._held(origins) if r.held.case_id > after})[:limit]

    def held_rows(self, *, origins: Sequence[str] | None, case_ids: Sequence[str]) -> list[HeldRow]:
        return [r for r in self._held(origins) if r.held.case_id in case_ids]

    # ---- what a child pushed
    def load_ledgers(
        self, child: str, events: Sequence[domain.InboundEvent]
    ) -> tuple[dict[str, domain.CaseLedger], set[str]]:
        ids = {e.event_id for e in events}
        stored_ids = {r.event.event_id for _, r, _ in self.t.replicas if r.event.event_id in ids}
        ledgers = {e.case_id: domain.CaseLedger() for e in events if e.case_id}
        for case_id, ledger in ledgers.items():
            ledger.last_sequence = self.last_passed(child, case_id) or None
            ledger.known_epoch = self.known_epoch(case_id)
            ledger.events_at = {
                r.event.case_sequence: r.event.event_id
                for c, r, _ in self.t.replicas
                if c == child and r.event.case_id == case_id
            }
        return ledgers, stored_ids

    def store_replicas(self, child: str, replicas: Sequence[Replica], now: datetime) -> None:
        # Without the trace context (a protobuf map, which the copy of the tables cannot take).
        self.t.replicas += [(child, replace(r, trace_context={}), now) for r in replicas]

    def last_passed(self, child: str, case_id: str) -> int:
        stored = [r.event.case_sequence for c, r, _ in self.t.replicas if c == child and r.event.case_id == case_id]
        skipped = [n for c, case, n in self.t.skips if c == child and case == case_id]
        return max([0, *stored, *skipped])

    def record_skip(self, child: str, case_id: str, case_sequence: int, quarantine_id: int, at: datetime) -> None:
        self.t.skips.append((child, case_id, case_sequence))

    # ---- ownership, the outbox, commands, the down-queue
    def note_epochs(self, epochs: dict[str, tuple[int, str]]) -> None:
        for case_id, (epoch, owner) in epochs.items():
            if case_id not in self.t.epochs or self.t.epochs[case_id][0] < epoch:
                self.t.epochs[case_id] = (epoch, owner)

    def known_owner(self, case_id: str) -> tuple[int, str] | None:
        return self.t.epochs.get(case_id)

    def known_epoch(self, case_id: str) -> int | None:
        known = self.t.epochs.get(case_id)
        return known[0] if known is not None else None

    def publish(self, events: Sequence[tuple[str, str, str, bytes]], now: datetime) -> None:
        self.t.outbox += list(events)

    def publish_one(self, event_id: str, event_type: str, case_id: str, body: bytes) -> None:
        self.t.outbox.append((event_id, event_type, case_id, body))

    def first_delivery(self, consumer: str, item_id: str) -> bool:
        if (consumer, item_id) in self.t.inbox:
            return False
        self.t.inbox.add((consumer, item_id))
        return True

    def enqueue_down(self, child: str, item_id: str, kind: str, body: bytes) -> None:
        self._children.add(child)
        if any(c == child and i == item_id for _, c, i, _, _, _ in self.t.down_queue):
            return
        position = (self.t.down_queue[-1][0] if self.t.down_queue else 0) + 1
        self.t.down_queue.append((position, child, item_id, kind, body, self._clock()))

    def pull_down(self, child: str, after: int, limit: int) -> tuple[list[Item], int]:
        mine = [(p, kind, body) for p, c, _, kind, body, _ in self.t.down_queue if c == child]
        return [Item(p, kind, body) for p, kind, body in mine if p > after][:limit], max([0, *(p for p, _, _ in mine)])

    def down_backlog(self, child: str, after: int) -> tuple[int, float]:
        waiting = [at for p, c, _, _, _, at in self.t.down_queue if c == child and p > after]
        return len(waiting), max(0.0, (self._clock() - waiting[0]).total_seconds()) if waiting else 0.0

    # ---- quarantine
    def quarantine(self, peer: str, direction: str, refused: Sequence[Refused]) -> None:
        for r in refused:
            qid = len(self.t.quarantine) + 1
            self.t.quarantine.append(QuarantineEntry(qid, peer, direction, r.item, r.reason, r.summary, self._clock()))

    def _entry(self, quarantine_id: int) -> QuarantineEntry | None:
        return next((q for q in self.t.quarantine if q.id == quarantine_id), None)

    def quarantined(self, quarantine_id: int) -> Quarantined | None:
        q = self._entry(quarantine_id)
        if q is None:
            return None
        return Quarantined(
            q.id,
            q.peer_node,
            q.direction,
            q.item.kind,
            q.item.body,
            q.item.case_sequence,
            q.summary,
            q.resolved_at is not None,
        )

    def set_quarantine_reason(self, quarantine_id: int, reason: str) -> None:
        entry = self._entry(quarantine_id)
        assert entry is not None
        entry.reason = reason

    def resolve_quarantine(
        self, quarantine_id: int, *, disposition: str, at: datetime, actor: str = "", note: str = ""
    ) -> None:
        entry = self._entry(quarantine_id)
        assert entry is not None
        entry.resolved_at, entry.disposition, entry.resolved_by, entry.note = at, disposition, actor[:64], note

    def held_up(self, peer: str, *, exclude: int) -> list[tuple[int, int, bytes]]:
        return [
            (q.id, q.item.case_sequence, q.item.body)
            for q in self.t.quarantine
            if q.peer_node == peer
            and q.direction == "up"
            and q.item.kind == ENVELOPE
            and q.resolved_at is None
            and q.id != exclude
        ]

    def list_quarantine(self, peer: str, *, after_id: int, limit: int) -> tuple[list[QuarantineRow], int]:
        open_ = [q for q in self.t.quarantine if q.resolved_at is None and (not peer or q.peer_node == peer)]
        rows = [
            QuarantineRow(q.id, q.peer_node, q.direction, q.reason, q.summary, q.received_at)
            for q in open_
            if q.id > after_id
        ]
        return rows[:limit], len(open_)

    def quarantined_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for q in self.t.quarantine:
            if q.resolved_at is None:
                counts[q.peer_node] = counts.get(q.peer_node, 0) + 1
        return counts

    # ---- audit anchors of children
    def record_anchor(self, child: str, sequence: int, chain_hash: str, at: datetime | None) -> None:
        self.t.anchors.setdefault((child, sequence), (chain_hash, at, self._clock()))

    def anchors(self, child: str) -> list[tuple[int, str, datetime | None, datetime]]:
        return [(s, h, at, got) for (c, s), (h, at, got) in sorted(self.t.anchors.items()) if c == child]
