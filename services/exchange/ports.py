"""What exchange's use cases need: the items that cross a link, the unit-of-work Protocol
(``store.SqlExchangeUnitOfWork`` implements it) and the node's dependencies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from services.common.regions import RegionTree
from services.exchange import domain
from services.exchange.digests import Held

ENVELOPE = "envelope"
COMMAND = "command"
# Consumer name in exchange's inbox for commands delivered at their target: each command id once.
DELIVERED = "command-delivered"
# Peer name of quarantined commands that this node's own services issued (they came from no link).
LOCAL = "local"
MAX_BATCH_BYTES = domain.MAX_BATCH_BYTES


@dataclass(frozen=True)
class Item:
    """One item crossing a link: its position on the sender's side and its serialized body."""

    position: int
    kind: str  # ENVELOPE | COMMAND
    body: bytes
    case_sequence: int = 0  # the sender's per-case link sequence (envelopes only)


@dataclass(frozen=True)
class UpRow:
    """A row to append to the up-log; its case sequence is given at append time."""

    event_id: str
    case_id: str
    version: int
    event_type: str
    origin_node: str
    body: bytes


@dataclass(frozen=True)
class Replica:
    """An event a child pushed that this node applies: its header and the body as it arrived."""

    event: domain.InboundEvent
    body: bytes
    hand_off_to: str = ""  # case_handed_off: the node the case goes to
    trace_context: Mapping[str, str] = field(default_factory=dict)  # the envelope's, not copied


@dataclass(frozen=True)
class CommandHead:
    """What routing a command reads of it (the body travels as it is, or retargeted by ``mapping.retarget``)."""

    command_id: str
    case_id: str
    target_node: str
    owner_epoch_seen: int
    handling: bool  # a handling update for the registering node: never follows ownership


@dataclass(frozen=True)
class HandOff:
    """A ``case_handed_off`` envelope: the case, where it goes and with which epoch."""

    event_id: str
    case_id: str
    to_node: str
    new_owner_epoch: int


@dataclass(frozen=True)
class Rejected:
    position: int
    reason: str


@dataclass(frozen=True)
class Refused:
    """An item to quarantine: what arrived, why it was refused, and what an operator sees of it."""

    item: Item
    reason: str
    summary: str


@dataclass(frozen=True)
class QuarantineRow:
    id: int
    peer_node: str
    direction: str
    reason: str
    summary: str
    received_at: datetime


@dataclass(frozen=True)
class Quarantined:
    """One quarantined item as a replay or a discard reads it."""

    id: int
    peer_node: str
    direction: str  # "up" (a child's push), "down" (from the parent or national), "local"
    kind: str
    body: bytes
    case_sequence: int
    summary: str
    resolved: bool


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


@dataclass(frozen=True)
class HeldRow:
    """An up-log envelope as a case digest reads it (``body``: the envelope as stored)."""

    held: Held
    body: bytes


class ExchangeUnitOfWork(Protocol):
    """One transaction of exchange's storage; ``store.SqlExchangeUnitOfWork`` implements it.

    Leaving the block without ``commit`` rolls back. The children something was queued down for
    are announced only after the commit (their long polls would not see the rows earlier).
    """

    def commit(self) -> None: ...

    # ---- cursors
    def lock_cursor(self, peer: str, kind: str) -> int:
        """The cursor's position, its row locked until the commit (created at 0 when new)."""
        ...

    def cursor_position(self, peer: str, kind: str) -> int: ...

    def save_cursor(self, peer: str, kind: str, *, position: int | None = None, token: str | None = None) -> int:
        """Store a cursor that never moves back (and the contact time); returns the stored position."""
        ...

    def cursor(self, peer: str, kind: str) -> Cursor | None: ...

    def cursors(self) -> list[tuple[str, str, Cursor]]: ...

    # ---- up-log
    def append_up(self, rows: Sequence[UpRow], *, fresh_ids: set[str] | None = None) -> list[UpRow]:
        """Append the rows not yet on the up-log, numbering each case's events; returns the ones appended.

        ``fresh_ids``: event ids the caller knows are not on the log, not looked up.
        """
        ...

    def append_up_command(self, hop_id: str, case_id: str, body: bytes) -> bool:
        """Put a command on the up-log for the parent link (once per leg); False if already there."""
        ...

    def pending_up(self, after: int, limit: int, *, envelopes_only: bool) -> list[Item]: ...

    def up_backlog(self, after: int) -> tuple[int, float]: ...

    def head_up(self) -> int: ...

    def holdings(self, *, origins: Sequence[str] | None, case_id: str) -> list[Held]: ...

    def digest_page(self, *, origins: Sequence[str] | None, after: str, limit: int) -> list[str]: ...

    def held_rows(self, *, origins: Sequence[str] | None, case_ids: Sequence[str]) -> list[HeldRow]: ...

    # ---- what a child pushed
    def load_ledgers(
        self, child: str, events: Sequence[domain.InboundEvent]
    ) -> tuple[dict[str, domain.CaseLedger], set[str]]:
        """What this node holds for the events' cases (from ``child``'s link) and which event ids it stores."""
        ...

    def store_replicas(self, child: str, replicas: Sequence[Replica], now: datetime) -> None: ...

    def last_passed(self, child: str, case_id: str) -> int:
        """The highest case sequence stored or skipped from ``child`` for the case."""
        ...

    def record_skip(self, child: str, case_id: str, case_sequence: int, quarantine_id: int, at: datetime) -> None: ...

    # ---- ownership, the outbox, commands, the down-queue
    def note_epochs(self, epochs: dict[str, tuple[int, str]]) -> None:
        """Raise each case's known ownership epoch (never lowers it)."""
        ...

    def known_owner(self, case_id: str) -> tuple[int, str] | None: ...

    def known_epoch(self, case_id: str) -> int | None: ...

    def publish(self, events: Sequence[tuple[str, str, str, bytes]], now: datetime) -> None:
        """(event id, type, case, body) rows to this node's outbox, in order per case."""
        ...

    def publish_one(self, event_id: str, event_type: str, case_id: str, body: bytes) -> None: ...

    def first_delivery(self, consumer: str, item_id: str) -> bool:
        """Record ``item_id`` in the inbox of ``consumer``; False when it was there already."""
        ...

    def enqueue_down(self, child: str, item_id: str, kind: str, body: bytes) -> None: ...

    def pull_down(self, child: str, after: int, limit: int) -> tuple[list[Item], int]: ...

    def down_backlog(self, child: str, after: int) -> tuple[int, float]: ...

    # ---- quarantine
    def quarantine(self, peer: str, direction: str, refused: Sequence[Refused]) -> None: ...

    def quarantined(self, quarantine_id: int) -> Quarantined | None: ...

    def set_quarantine_reason(self, quarantine_id: int, reason: str) -> None: ...

    def resolve_quarantine(
        self, quarantine_id: int, *, disposition: str, at: datetime, actor: str = "", note: str = ""
    ) -> None: ...

    def held_up(self, peer: str, *, exclude: int) -> list[tuple[int, int, bytes]]:
        """(quarantine id, case sequence, body) of unresolved envelopes quarantined from child ``peer``."""
        ...

    def list_quarantine(self, peer: str, *, after_id: int, limit: int) -> tuple[list[QuarantineRow], int]: ...

    def quarantined_counts(self) -> dict[str, int]: ...

    # ---- audit anchors of children
    def record_anchor(self, child: str, sequence: int, chain_hash: str, at: datetime | None) -> None: ...

    def anchors(self, child: str) -> list[tuple[int, str, datetime | None, datetime]]: ...


UnitOfWorkFactory = Callable[[], AbstractContextManager[ExchangeUnitOfWork]]


@dataclass(frozen=True)
class ExchangeDeps:
    """The node an exchange runs for, its region tree and clock."""

    node: str
    regions: RegionTree
    clock: Callable[[], datetime]
