"""Exchange's use cases over a unit of work (no gRPC, SQLAlchemy or nameko here).

``Exchange`` is one node's exchange as the links (``link``, ``national``), the servicer and the
operator commands use it: every public method is one use case, and every write is one transaction
(``ports.ExchangeUnitOfWork``) after which the relay and the parent link are woken. What an item
does once it reached the node is in ``receiving``; the rules in ``domain``; the protobuf reading in
``mapping``. ``store.ExchangeStore`` is this class over SQL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from services.common.waiting import Changes
from services.exchange import domain, mapping, quarantine_ops
from services.exchange.digests import CaseSummary, Held, digest, summarise_case
from services.exchange.ports import (
    COMMAND,
    ENVELOPE,
    LOCAL,
    MAX_BATCH_BYTES,
    Cursor,
    DiscardOutcome,
    ExchangeDeps,
    Item,
    QuarantineRow,
    Rejected,
    ReplayOutcome,
    UnitOfWorkFactory,
)
from services.exchange.receiving import accept_from_child, accept_from_parent, quarantine, route_command

if TYPE_CHECKING:
    from lianxin.events.v1 import events_pb2

log = logging.getLogger(__name__)

# A child's push is stored in transactions of at most this many items (``Exchange.receive_push``):
# a whole push of the default batch. At 100, each fifth of a catch-up push woke the relay and the
# link up on its own, and a 10,000-event catch-up reached the city at 3,926 events/s against 6,041
# (SQLite, ``lianxin bench --only catchup``). Reads no longer take the write lock and writers wait
# in the writer queue, so a whole push's transaction (~0.08 s there) no longer meets the 30 s
# waits that once made the chunks small.
RECEIVE_CHUNK = domain.BATCH_ITEMS


class Exchange:
    """All of exchange's use cases for one node; every public method that writes is one transaction."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        deps: ExchangeDeps,
        *,
        notify: Callable[[], None] = lambda: None,
        wake_link: Callable[[], None] = lambda: None,
        read_uow: UnitOfWorkFactory | None = None,
    ) -> None:
        self._uow = uow_factory
        # For the use cases that only read (a link's pending batch and cursor, a child's PullDown, the
        # lag figures): on SQLite a transaction that does not take the write lock, so these neither
        # wait for the writers nor hold them up (under a backlog a city's pushes waited 30 s on it).
        self._read = read_uow or uow_factory
        self._deps = deps
        self.node = deps.node
        self.regions = deps.regions
        self._clock = deps.clock
        self._notify_relay = notify
        # Called after a commit that may have appended to the up-log: the parent link pushes it.
        self.wake_link = wake_link
        # Called instead after this node's own events were appended (``record_local_batch``): the
        # link gathers a case's burst into one push (``ParentLink.wake_local``); None: ``wake_link``.
        self.wake_link_local: Callable[[], None] | None = None
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
        with self._uow() as uow:
            # Lock order everywhere: up-log case locks, then case epochs, then the outbox.
            added = len(uow.append_up([mapping.up_row(env, body) for env, body in events]))
            for env, body in events:
                if env.WhichOneof("payload") != "case_handed_off":
                    continue
                hand_off = mapping.hand_off_of(env)
                uow.note_epochs({hand_off.case_id: (hand_off.new_owner_epoch, hand_off.to_node)})
                route = domain.route_down(hand_off.to_node, here=self.node, regions=self.regions)
                if route is not None and not route.local:
                    uow.enqueue_down(route.next_child, hand_off.event_id, ENVELOPE, body)
            uow.commit()
        if added:
            (self.wake_link_local or self.wake_link)()
        return added

    def pending_up(
        self, after: int, limit: int, *, max_bytes: int = MAX_BATCH_BYTES, envelopes_only: bool = False
    ) -> list[Item]:
        """The up-log after ``after``: at most ``limit`` items and about ``max_bytes`` of bodies (at least one)."""
        with self._read() as uow:
            items = uow.pending_up(after, limit, envelopes_only=envelopes_only)
        return items[: domain.batch_length([len(item.body) for item in items], max_bytes=max_bytes)]

    def up_backlog(self, after: int) -> tuple[int, float]:
        """(items after ``after``, age in seconds of the oldest) for lag figures."""
        with self._read() as uow:
            return uow.up_backlog(after)

    def head_up(self) -> int:
        with self._read() as uow:
            return uow.head_up()

    # ------------------------------------------------------------------ cursors

    def cursor(self, peer: str, kind: str) -> Cursor:
        with self._read() as uow:
            stored = uow.cursor(peer, kind)
        if stored is None:
            return Cursor(0, "", self._contact(peer, kind, None))
        return Cursor(stored.position, stored.token, self._contact(peer, kind, stored.last_contact))

    def save_cursor(self, peer: str, kind: str, *, position: int | None = None, token: str | None = None) -> int:
        """Store a cursor that never moves back; returns the stored position."""
        with self._uow() as uow:
            stored = uow.save_cursor(peer, kind, position=position, token=token)
            uow.commit()
        return stored

    def cursors(self) -> list[tuple[str, str, Cursor]]:
        with self._read() as uow:
            rows = uow.cursors()
        found = [
            (peer, kind, Cursor(c.position, c.token, self._contact(peer, kind, c.last_contact)))
            for peer, kind, c in rows
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

        One transaction per ``RECEIVE_CHUNK`` items with a handful of statements each: the case
        knowledge is loaded with IN lists, judged in memory by the pure rules, and written with
        executemany. Each chunk commits with the child's cursor, so a push that fails part way is
        resent and its stored part skipped; bounded chunks keep SQLite's write lock, which every
        other child's push and the relay wait for, held for a chunk's time, not a catch-up batch's.
        """
        acked = 0
        rejections: list[Rejected] = []
        for start in range(0, max(1, len(items)), RECEIVE_CHUNK):
            acked, rejected, applied = self._receive_chunk(child, items[start : start + RECEIVE_CHUNK])
            rejections += rejected
            if applied:
                self._notify()  # the relay and the parent link start on this chunk while the next is stored
        return acked, rejections

    def _receive_chunk(self, child: str, items: Sequence[Item]) -> tuple[int, list[Rejected], bool]:
        with self._uow() as uow:
            # Locks the child's cursor row: a retried push racing the original waits, then skips.
            stored = uow.lock_cursor(child, "child_up")
            indexes, acked = domain.fresh_positions([item.position for item in items], stored)
            fresh = [items[i] for i in indexes]
            outcomes = accept_from_child(uow, self._deps, child, fresh)
            refused = [(item, reason) for item, reason in zip(fresh, outcomes, strict=True) if reason]
            quarantine(uow, child, "up", refused)
            uow.save_cursor(child, "child_up", position=acked)
            uow.commit()
        return acked, [Rejected(item.position, reason) for item, reason in refused], None in outcomes

    def known_owner(self, case_id: str) -> tuple[int, str] | None:
        """(epoch, owner node) of the newest hand-off this node has seen for the case, if any."""
        with self._read() as uow:
            return uow.known_owner(case_id)

    # ------------------------------------------------------------------ commands

    def enqueue_command(self, command: events_pb2.Command) -> str | None:
        """Route a locally issued command toward its target; returns a refusal reason, None when routed."""
        with self._uow() as uow:
            reason = route_command(uow, self._deps, command.SerializeToString(), came_from_parent=False)
            uow.commit()
        if reason is None:
            self._notify()
        return reason or None

    def record_command(self, body: bytes) -> str | None:
        """A command this node's services put on the bus: routed, or quarantined (peer ``local``) with the reason.

        Idempotent: a redelivered command takes the same leg (same up-log or down-queue key) or is
        delivered once (inbox), so the bus may deliver it again.
        """
        with self._uow() as uow:
            reason = route_command(uow, self._deps, body, came_from_parent=False)
            if reason:
                quarantine(uow, LOCAL, "local", [(Item(0, COMMAND, body), reason)])
            uow.commit()
        if reason is None:
            self._notify()
        return reason or None

    # ------------------------------------------------------------------ down

    def pull_down(self, child: str, after: int, limit: int) -> tuple[list[Item], int]:
        with self._read() as uow:
            items, head = uow.pull_down(child, after, limit)
            uow.commit()
        self.note_contact(child, "child_down")  # remembered, not written: an idle child pulls often
        return items, head

    def ack_down(self, child: str, position: int) -> int:
        return self.save_cursor(child, "child_down", position=position)

    def down_backlog(self, child: str, after: int) -> tuple[int, float]:
        with self._read() as uow:
            return uow.down_backlog(child, after)

    def apply_down(self, parent: str, items: Sequence[Item], *, cursor_kind: str = "down") -> int:
        """Apply pulled items exactly once (the cursor moves in the same transaction); returns the new cursor."""
        applied_any = False
        with self._uow() as uow:
            stored = uow.cursor_position(parent, cursor_kind)
            position = stored
            for item in items:
                if item.position <= stored:
                    continue
                reason = accept_from_parent(uow, self._deps, item)
                if reason:
                    quarantine(uow, parent, "down", [(item, reason)])
                else:
                    applied_any = True
                position = max(position, item.position)
            position = uow.save_cursor(parent, cursor_kind, position=position)
            uow.commit()
        if applied_any:
            self._notify()
        return position

    def apply_transfers(self, items: Sequence[tuple[str, bytes]]) -> None:
        """National transfers as hand-off envelopes: each transfer id once (the national side may duplicate)."""
        applied_any = False
        with self._uow() as uow:
            for transfer_id, body in items:
                if not uow.first_delivery("national", transfer_id[:36]):
                    continue
                reason = accept_from_parent(uow, self._deps, Item(0, ENVELOPE, body))
                if reason:
                    quarantine(uow, "national", "down", [(Item(0, ENVELOPE, body), reason)])
                else:
                    applied_any = True
            uow.save_cursor("national", "national_down")  # records the contact
            uow.commit()
        if applied_any:
            self._notify()

    # ------------------------------------------------------------------ quarantine

    def list_quarantine(
        self, peer: str = "", *, after_id: int = 0, limit: int = 100
    ) -> tuple[list[QuarantineRow], int]:
        with self._read() as uow:
            return uow.list_quarantine(peer, after_id=after_id, limit=limit)

    def quarantined_counts(self) -> dict[str, int]:
        with self._read() as uow:
            return uow.quarantined_counts()

    def replay(self, ids: Sequence[int]) -> list[ReplayOutcome]:
        """Retry quarantined items in the order they arrived; those that pass are applied and resolved."""
        outcomes, applied_any = quarantine_ops.replay(self._uow, self._deps, ids)
        if applied_any:
            self._notify()
        return outcomes

    def replay_in_order(self, ids: Sequence[int]) -> list[ReplayOutcome]:
        """``replay`` one item at a time in the order given (a case's items by sequence, not arrival)."""
        outcomes: list[ReplayOutcome] = []
        for qid in ids:
            outcomes += self.replay([qid])
        return outcomes

    def discard(self, ids: Sequence[int], *, actor: str, note: str) -> list[DiscardOutcome]:
        """Discard quarantined items for good, then replay the later items of each case held behind them
        (``quarantine_ops.discard``)."""
        return quarantine_ops.discard(
            self._uow, self._deps, ids, actor=actor, note=note, replay_in_order=self.replay_in_order
        )

    # ------------------------------------------------------------------ audit anchors of children

    def record_anchor(self, child: str, sequence: int, chain_hash: str, at: datetime | None) -> None:
        """Keep a child's audit chain head; the first hash received for a sequence is never replaced."""
        with self._uow() as uow:
            uow.record_anchor(child, sequence, chain_hash, at)
            uow.commit()

    def anchors(self, child: str) -> list[tuple[int, str, datetime | None, datetime]]:
        """(sequence, hash, written at, received at) of ``child``'s anchors, oldest first."""
        with self._read() as uow:
            return uow.anchors(child)

    # ------------------------------------------------------------------ what this node holds

    def _origins(self, subtree: str) -> list[str] | None:
        return list(self.regions.subtree(subtree)) if subtree else None

    def holdings(self, *, subtree: str = "", case_id: str = "") -> list[Held]:
        """Each case event held (the up-log: own and the subtree's), by case, envelope version and event id."""
        with self._read() as uow:
            return uow.holdings(origins=self._origins(subtree), case_id=case_id)

    def case_digests(
        self, *, subtree: str = "", case_ids: Sequence[str] = (), after: str = "", limit: int = 500
    ) -> list[CaseSummary]:
        """One summary per case held (``DigestCases``): the given cases, or a page of ``limit`` cases
        after the case id ``after``, each over its events that originated in ``subtree``."""
        origins = self._origins(subtree)
        with self._read() as uow:
            page = sorted(set(case_ids)) if case_ids else uow.digest_page(origins=origins, after=after, limit=limit)
            if not page:
                return []
            rows = uow.held_rows(origins=origins, case_ids=page)
        by_case: dict[str, list[tuple[Held, bytes]]] = {}
        for row in rows:
            by_case.setdefault(row.held.case_id, []).append((row.held, row.body))
        out = []
        for case_id in page:
            found = by_case.get(case_id, [])
            held = [h for h, _ in found]
            events = [event for _, body in found if (event := mapping.held_event(body)) is not None]
            out.append(summarise_case(case_id, events, digest(held) if held else ""))
        return out
