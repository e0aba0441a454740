"""exchange's tables: the up-log (what travels to the parent), replicas, the down-queue, cursors, quarantine.

Every position is an autoincrement key that is never reused, so it can serve as a cursor that both
sides of a link persist (CouchDB-style checkpoints): a restart or a partition resumes after the last
acknowledged position.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase

from services.common.outbox import inbox_table, outbox_table


class Base(DeclarativeBase):
    pass


metadata = Base.metadata
outbox = outbox_table(metadata)
inbox = inbox_table(metadata)

ENVELOPE_KIND = "envelope"

# SQLite needs exactly INTEGER for an autoincrement rowid; PostgreSQL gets a 64-bit sequence.
_POSITION = BigInteger().with_variant(Integer(), "sqlite")

# Every case event of this node's subtree (local ones and children's replicas), in arrival order;
# the position is the cursor of the link to the parent (and of the national link on the province).
# ``case_sequence`` numbers a case's events on this log 1, 2, ... (the link's per-case order): the
# services of a node choose envelope versions independently (video sends 0, intake and routing may
# race to the same number), so the link orders by what its single appender assigned instead.
# Commands climbing toward a node above (``kind`` "command") share the log, so one cursor orders
# both; they carry case sequence 0 (no per-case order: the owner applies each command once by id)
# and ``event_id`` is the hop key (command id, target, epoch seen), so a command retargeted after a
# hand-off can pass a node again.
up_log = Table(
    "up_log",
    metadata,
    Column("position", _POSITION, primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("case_id", String(64), nullable=False),
    Column("case_sequence", BigInteger, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("origin_node", String(6), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("kind", String(16), nullable=False, server_default=ENVELOPE_KIND),  # "envelope" | "command"
    Index(
        "ux_up_log_envelope_case_sequence",
        "case_id",
        "case_sequence",
        unique=True,
        sqlite_where=text(f"kind = '{ENVELOPE_KIND}'"),
        postgresql_where=text(f"kind = '{ENVELOPE_KIND}'"),
    ),
    sqlite_autoincrement=True,
)

# Read-only replicas of the subtree's case events, received from direct children; one per event id.
# ``case_sequence`` is the child link's sequence: one per (child, case, sequence), checked for gaps.
replica = Table(
    "replica",
    metadata,
    Column("event_id", String(36), primary_key=True),
    Column("case_id", String(64), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("origin_node", String(6), nullable=False),
    Column("owner_node", String(6), nullable=False),
    Column("owner_epoch", BigInteger, nullable=False),
    Column("child_node", String(6), nullable=False),
    Column("case_sequence", BigInteger, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Index("ux_replica_child_case_sequence", "child_node", "case_id", "case_sequence", unique=True),
)

# Highest ownership epoch seen per case; an inbound write below it comes from a stale owner.
case_epoch = Table(
    "case_epoch",
    metadata,
    Column("case_id", String(64), primary_key=True),
    Column("owner_epoch", BigInteger, nullable=False),
    Column("owner_node", String(6), nullable=False),
)

# Hand-offs and commands waiting for a child to pull them, one queue per direct child.
down_queue = Table(
    "down_queue",
    metadata,
    Column("position", _POSITION, primary_key=True, autoincrement=True),
    Column("child_node", String(6), nullable=False),
    Column("item_id", String(64), nullable=False),
    Column("kind", String(16), nullable=False),  # "envelope" | "command"
    Column("body", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_down_queue_child_position", "child_node", "position"),
    Index("ux_down_queue_child_item", "child_node", "item_id", unique=True),
    sqlite_autoincrement=True,
)

# Positions both sides persist: (peer, kind) with kind "up" (my up-log acked by the parent),
# "down" (parent's queue applied here), "child_up" (a child's up-log stored here), "child_down"
# (my queue acked by a child), "national_up", "national_down" (an opaque cursor in `token`).
link_cursor = Table(
    "link_cursor",
    metadata,
    Column("peer", String(16), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("position", BigInteger, nullable=False, default=0),
    Column("token", Text, nullable=False, default=""),
    Column("last_contact", DateTime(timezone=True), nullable=True),
    PrimaryKeyConstraint("peer", "kind", name="pk_link_cursor"),
)

# Inbound items refused by validation, kept with the reason until an operator replays them.
quarantine = Table(
    "quarantine",
    metadata,
    Column("id", _POSITION, primary_key=True, autoincrement=True),
    Column("peer_node", String(16), nullable=False),
    Column("direction", String(8), nullable=False),  # "up" (from a child) | "down" (from the parent)
    Column("kind", String(16), nullable=False),  # "envelope" | "command"
    Column("reason", Text, nullable=False),
    Column("summary", Text, nullable=False),
    Column("body", LargeBinary, nullable=False),
    # The sender's per-case link sequence, so a replay judges the item exactly as it arrived.
    Column("case_sequence", BigInteger, nullable=False, default=0),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("resolved_at", DateTime(timezone=True), nullable=True),
    # How it left quarantine: "replayed" (it passed) or "discarded" (by ``resolved_by``, for ``note``).
    Column("disposition", String(16), nullable=True),
    Column("resolved_by", String(64), nullable=True),
    Column("note", Text, nullable=True),
    Index("ix_quarantine_peer_resolved", "peer_node", "resolved_at"),
    sqlite_autoincrement=True,
)

# Case sequences of a child's link that an operator discarded from quarantine: each counts as
# passed, so the case's next event on that link is judged after it (docs/exchange.md, discard).
sequence_skip = Table(
    "sequence_skip",
    metadata,
    Column("child_node", String(16), nullable=False),
    Column("case_id", String(64), nullable=False),
    Column("case_sequence", BigInteger, nullable=False),
    Column("quarantine_id", BigInteger, nullable=False),
    Column("skipped_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("child_node", "case_id", "case_sequence", name="pk_sequence_skip"),
)


# Heads of each direct child's audit chain, as the child sent them (services.common.audit): the
# first hash received for a sequence stays, so a child that later rewrites its chain cannot move
# the anchor; its ``lianxin audit verify`` compares against these.
audit_anchor = Table(
    "audit_anchor",
    metadata,
    Column("child_node", String(16), nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("at", DateTime(timezone=True), nullable=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("child_node", "sequence", name="pk_audit_anchor"),
)
